#!/usr/bin/env python3
"""Times one sweep run three ways from empty stores: in one process (--jobs 1), in the
local process pool (--jobs N) and as Ray tasks on a local Ray instance (--ray local
--jobs N), and what each way adds per cell, from a sweep of cells that measure nothing.

    bench/sweep-backends.py [--sweep examples/sweeps/smoke.toml] [--jobs 2] [--noop 100]

Prints a markdown table: wall time, the cells' own seconds summed, the share of the
wall x jobs the cells used, and the overhead per cell ((wall x jobs - cell seconds) /
cells: start-up, hand-overs, stragglers at the end). Needs `pip install '.[sweep]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(sweep: pathlib.Path, store: pathlib.Path, extra: list[str]) -> tuple[float, float, int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "spillway.sweep", str(sweep), "--out", str(store),
                        *extra], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"sweep-backends: {' '.join(extra)} failed:\n{r.stderr}")
    cells = [json.loads(p.read_text()) for p in (store / "cells").glob("*.json")]
    return wall, sum(c["provenance"]["seconds"] for c in cells), len(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", type=pathlib.Path, default=ROOT / "examples/sweeps/smoke.toml")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--noop", type=int, default=100, help="cells of the sweep that measures "
                    "nothing (0: skip)")
    args = ap.parse_args()
    ways = [("one process", ["--jobs", "1"], 1),
            (f"local pool, {args.jobs} processes", ["--jobs", str(args.jobs)], args.jobs),
            (f"local Ray, {args.jobs} CPUs", ["--ray", "local", "--jobs", str(args.jobs)],
             args.jobs)]
    print("| sweep | way | cells | wall s | cell s (sum) | cells' share of wall x jobs | "
          "overhead per cell s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        sweeps = [(args.sweep.name, args.sweep)]
        if args.noop:
            noop = tmp / "noop.toml"
            noop.write_text(
                f'[models.m]\npath = "{ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"}"\n'
                f'[texts.t]\npath = "{ROOT / "data/austen.txt"}"\n'
                f'[[grid]]\nmeasure = "python:sweep_noop:noop"\npolicies = ["window:{{c}}"]\n'
                f'caches = {list(range(1, args.noop + 1))}\noptions = {{ max_tokens = 64 }}\n')
            sweeps.append((f"{args.noop} cells measuring nothing", noop))
        for label, sweep in sweeps:
            for i, (way, extra, jobs) in enumerate(ways):
                wall, cell_s, n = run(sweep, tmp / f"{label[:8]}-{i}", extra)
                share = cell_s / (wall * jobs)
                over = (wall * jobs - cell_s) / n
                print(f"| {label} | {way} | {n} | {wall:.1f} | {cell_s:.1f} | "
                      f"{100 * share:.0f} % | {over:.2f} |", flush=True)


if __name__ == "__main__":
    main()
