"""Policy sweeps: a sweep file (TOML) names models, texts, policies, cache sizes and
measurements; it expands to cells, each keyed by what determines its result (model and
text sha256, spec, measurement options, library version, kernel family). A store keeps
one JSON record per cell, so a sweep is resumable and incremental, and the tidy table
(one row per cell and figure) comes out of it. Cells run in this process, in a local
process pool, or as Ray tasks (`pip install 'spillway[sweep]'`). See docs/sweeps.md.

    sweep = load_sweep("examples/sweeps/smoke.toml")
    store = Store("out/smoke")
    run_sweep(sweep, store, jobs=2)
    df = table(sweep, store)            # pandas
    res = Results(sweep, store)         # records by spec and options, for renderers
    res.series("sink:4+252", text="austen").ppl(896, 1280)
"""

from __future__ import annotations

from ._cell import run_cell
from ._results import Results, Series, paired
from ._run import Outcome, run_sweep
from ._spec import MEASURES, Cell, Input, Sweep, SweepError, expand_template, load_sweep
from ._store import Store, write_atomic
from ._table import COLUMNS, plot, records, rows, table, write_table

__all__ = ["COLUMNS", "MEASURES", "Cell", "Input", "Outcome", "Results", "Series", "Store",
           "Sweep", "SweepError", "expand_template", "load_sweep", "paired", "plot",
           "records", "rows", "run_cell", "run_sweep", "table", "write_atomic",
           "write_table"]
