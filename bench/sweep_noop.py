"""A measurement that measures nothing: bench/sweep-backends.py runs cells of it to time
what a backend adds to each cell (hand-over, record, store), loaded by the workers as
python:sweep_noop:noop (the benchmark puts bench/ on PYTHONPATH)."""


def noop(model, ids, spec, options, threads):
    return {"tokens": len(ids)}
