#!/usr/bin/env python3
"""Plot recall (copy probe) or accuracy (passkey, lines) against distance, one line per
KV-cache policy.

Usage: plot-recall.py JSON PNG [--title T]

JSON is what `spillway recall --json` writes: {"probe", "rows": [{"spec", "distance",
"recall" | "accuracy", "capacity", ...}]}. The distance axis is logarithmic; a dashed
vertical line marks each cache size (a policy's capacity) among the rows, and a dotted
horizontal one the 0.5 that defines a policy's effective context.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plotting import import_pyplot, save_figure  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description="Plot recall against distance per policy.")
    ap.add_argument("json", help="rows from `spillway recall --json`")
    ap.add_argument("png", help="output image")
    ap.add_argument("--title", default="", help="plot title")
    args = ap.parse_args()
    try:
        with open(args.json) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit("plot-recall.py: cannot read '%s': %s" % (args.json, e))
    rows = data.get("rows", data) if isinstance(data, dict) else data
    if not rows:
        sys.exit("plot-recall.py: '%s' holds no rows" % args.json)
    probe = rows[0].get("probe", "copy")
    measure = "recall" if probe == "copy" else "accuracy"
    plt = import_pyplot(__file__)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    specs, capacities = [], set()
    for r in rows:
        if r["spec"] not in specs:
            specs.append(r["spec"])
        if r.get("capacity"):
            capacities.add(r["capacity"])
    for spec in specs:
        pts = sorted((r["distance"], r.get(measure)) for r in rows if r["spec"] == spec)
        pts = [(d, v) for d, v in pts if v is not None and d > 0]
        if pts:
            ax.plot([d for d, _ in pts], [v for _, v in pts], "o-", label=spec, markersize=4)
    ax.set_xscale("log", base=2)
    for c in sorted(capacities):
        ax.axvline(c, color="grey", linestyle="--", linewidth=1)
        ax.text(c, 1.0, " cache %d" % c, transform=ax.get_xaxis_transform(), va="top",
                ha="left", fontsize=8, color="grey")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("distance (filler tokens between the first sight and the recall)")
    ax.set_ylabel("recall = 1 - NLL(again) / NLL(first)" if measure == "recall"
                  else "accuracy (exact answers)")
    if args.title:
        ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, args.png)
    except OSError as e:
        sys.exit("plot-recall.py: cannot write '%s': %s" % (args.png, e.strerror))


if __name__ == "__main__":
    main()
