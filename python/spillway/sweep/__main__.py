"""spillway-sweep FILE --out DIR [--ray auto|local|ADDRESS] [--jobs N] (also
`python -m spillway.sweep`): measures the cells of a sweep file that DIR lacks and writes
DIR/results.csv (and results.parquet), the tidy table of every cell of the sweep."""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
from typing import Optional, Sequence

from ._run import run_sweep
from ._spec import SweepError, load_sweep
from ._store import Store
from ._table import plot, table, write_table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spillway-sweep",
        description="Run a policy sweep: measure the cells of FILE that the store in --out "
                    "lacks (locally, or on a Ray cluster), then write the tidy table "
                    "DIR/results.csv (and DIR/results.parquet with pyarrow).")
    p.add_argument("file", help="the sweep file (TOML)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the result store: DIR/cells/KEY.json per cell, DIR/results.csv")
    p.add_argument("--ray", metavar="auto|local|ADDRESS",
                   help="run the cells as Ray tasks: 'auto' joins the cluster this machine "
                        "belongs to (ray start), 'local' starts a Ray instance for the sweep "
                        "and stops it after, ADDRESS joins that cluster (host:port)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="cells at once on this machine (default: cores / the sweep's threads "
                        "per cell; 1 runs them in this process). With --ray local: the "
                        "instance's CPUs are N x threads")
    p.add_argument("--retry-failed", action="store_true",
                   help="measure again the cells stored as failed")
    p.add_argument("--isa", metavar="FAMILY",
                   help="the kernel family cells are keyed for and workers run (default: the "
                        "sweep's isa, else this machine's; scalar, avx2, avx512-vnni)")
    p.add_argument("--plot", action="append", default=[], metavar="FIGURE",
                   help="draw FIGURE (ppl, kl_mean, recall, ...) from the table into "
                        "DIR/FIGURE.png: a line per policy across cache sizes (matplotlib); "
                        "repeatable")
    p.add_argument("--list", action="store_true",
                   help="print the cells and whether each is stored, run nothing")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    # `spillway-sweep ... --list | head` ends quietly. Only there: during a run the pool's
    # pipes to workers killed by Ctrl-C may break, which must not kill the sweep itself.
    if args.list and hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        sweep = load_sweep(args.file, isa=args.isa)
    except SweepError as e:
        print(f"spillway-sweep: {e}", file=sys.stderr)
        return 2
    if args.jobs is not None and args.jobs < 1:
        print("spillway-sweep: --jobs must be at least 1", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    try:
        store = Store(out)
    except OSError as e:
        print(f"spillway-sweep: cannot create the store {out}: {e.strerror}", file=sys.stderr)
        return 1
    if args.list:
        for cell in sweep.cells:
            rec = store.get(cell.key)
            state = "missing" if rec is None else rec["status"]
            print(f"{cell.key}  {state:8s} {cell.label()}")
        return 0
    jobs = args.jobs or max(1, (os.cpu_count() or 1) // sweep.threads)
    print(f"spillway-sweep: {sweep.name}: {len(sweep.cells)} cells, {sweep.threads} threads "
          f"each, kernels {sweep.isa}, store {out}, "
          + (f"Ray ({args.ray})" if args.ray else
             ("this process" if jobs == 1 else f"{jobs} local processes")), file=sys.stderr)
    outcome = run_sweep(sweep, store, jobs=jobs, ray_address=args.ray,
                        retry_failed=args.retry_failed)
    df = table(sweep, store)  # one read of the store serves the files, plots and status
    for path in write_table(sweep, store, out, df):
        print(f"spillway-sweep: wrote {path}", file=sys.stderr)
    if args.plot:
        for figure in args.plot:
            path = out / f"{figure}.png"
            if plot(df, figure, path, title=sweep.name):
                print(f"spillway-sweep: wrote {path}", file=sys.stderr)
            else:
                print(f"spillway-sweep: no figure '{figure}' measured, no plot",
                      file=sys.stderr)
    print(f"spillway-sweep: {outcome.ok} measured, {outcome.failed} failed, {outcome.kept} "
          f"kept from the store, {outcome.left} left; {outcome.seconds:.1f} s",
          file=sys.stderr)
    if outcome.interrupted:
        print("spillway-sweep: stopped; run it again to measure the cells left",
              file=sys.stderr)
        return 130
    # Failed cells kept from an earlier run count too: the table is not complete.
    failed = (df.status == "failed").any()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
