"""Measurements of the sweep tests, loaded by the workers as python:sweep_measures:NAME
(the tests put this folder on PYTHONPATH)."""

from __future__ import annotations

import os


def crash_once(model, ids, spec, options, threads):
    """Kills its own process the first time it runs (the marker file does not exist yet),
    as a node dying or the kernel's OOM killer would; measures the stream length after."""
    try:
        fd = os.open(options["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return {"tokens": len(ids), "pid": os.getpid()}
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(7)


def fails(model, ids, spec, options, threads):
    raise ZeroDivisionError("this measurement always fails")  # not a library error


def by_point(model, ids, spec, options, threads):
    return {"figures": {"first_ids": {i: int(t) for i, t in enumerate(ids[:3])}},
            "arrays": {"ids": [int(t) for t in ids]}}
