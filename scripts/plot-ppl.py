#!/usr/bin/env python3
"""Plot streaming perplexity against token index, one line per KV-cache policy.

Usage: plot-ppl.py CSV PNG [--title T] [--window N] [--ctx C] [--from I]

CSV is what `spillway ppl --csv` writes: a column `token` (stream index of the
scored target), then one column of per-token negative log-likelihood (natural log)
per policy; a cell is empty where that policy scored nothing. Each line shows
exp(mean NLL over the last N scored tokens), on a log scale, from the point
where N tokens have been scored, like Figure 3 of
the StreamingLLM paper. A dashed vertical line marks the model's trained context
(--ctx, default 8192) when the token range passes it.

The CLI runs this with plain `python3`. If that interpreter lacks matplotlib,
the script runs itself again with the system interpreter (/usr/bin/python3,
where Debian's python3-matplotlib lives), so it works from any environment.
"""

import argparse
import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plotting import import_pyplot, save_figure  # noqa: E402


def read_csv(path):
    """Returns (policies, columns): columns[p] is a list of (token, nll) pairs."""
    try:
        f = open(path, newline="")
    except OSError as e:
        sys.exit("plot-ppl.py: cannot read '%s': %s" % (path, e.strerror))
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            sys.exit("plot-ppl.py: '%s' is empty" % path)
        if not header or header[0] != "token" or len(header) < 2:
            sys.exit(
                "plot-ppl.py: '%s' line 1: expected header 'token,<policy>,...', found '%s'"
                % (path, ",".join(header))
            )
        policies = header[1:]
        columns = {p: [] for p in policies}
        # Columns of `--reference` runs (kl:<policy>, top1:<policy>) are not NLLs.
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                sys.exit(
                    "plot-ppl.py: '%s' line %d: expected %d cells, found %d"
                    % (path, line_no, len(header), len(row))
                )
            try:
                token = int(row[0])
                for p, cell in zip(policies, row[1:]):
                    if cell.strip():
                        columns[p].append((token, float(cell)))
            except ValueError as e:
                sys.exit("plot-ppl.py: '%s' line %d: %s" % (path, line_no, e))
    return policies, columns


def sliding_ppl(points, window):
    """exp(mean NLL over the last `window` scored tokens) at each scored token.

    Points start once the window is full (or, for a series shorter than the window,
    at its last token), so the first few tokens' noise does not dominate the scale.
    """
    xs, ys = [], []
    first = min(window, len(points)) - 1
    total = 0.0
    for i, (token, nll) in enumerate(points):
        total += nll
        if i >= window:
            total -= points[i - window][1]
        if i < first:
            continue
        n = min(i + 1, window)
        xs.append(token)
        ys.append(math.exp(min(total / n, 700.0)))
    return xs, ys


def main():
    ap = argparse.ArgumentParser(description="Plot streaming perplexity per KV-cache policy.")
    ap.add_argument("csv", help="per-token NLL CSV from `spillway ppl --csv`")
    ap.add_argument("png", help="output image")
    ap.add_argument("--title", default="", help="plot title")
    ap.add_argument("--window", type=int, default=256, help="tokens per sliding mean (256)")
    ap.add_argument("--ctx", type=int, default=8192, help="trained context to mark (8192)")
    ap.add_argument(
        "--from", dest="start", type=int, default=0, help="plot from this token index on"
    )
    args = ap.parse_args()
    if args.window < 1:
        sys.exit("plot-ppl.py: --window must be at least 1, got %d" % args.window)

    policies, columns = read_csv(args.csv)
    policies = [p for p in policies if not p.startswith(("kl:", "top1:"))]
    plt = import_pyplot(__file__)

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    x_min, x_max = None, None
    drawn = 0
    for p in policies:
        pts = columns[p]
        if not pts:
            continue
        xs, ys = sliding_ppl(pts, args.window)
        keep = [i for i, x in enumerate(xs) if x >= args.start]
        if not keep:
            continue
        xs = [xs[i] for i in keep]
        ys = [ys[i] for i in keep]
        style = "o-" if len(xs) < 50 else "-"
        ax.plot(xs, ys, style, label=p, linewidth=1.2, markersize=3)
        drawn += 1
        x_min = xs[0] if x_min is None else min(x_min, xs[0])
        x_max = xs[-1] if x_max is None else max(x_max, xs[-1])
    if drawn == 0:
        sys.exit("plot-ppl.py: '%s' holds no scored tokens" % args.csv)
    if args.ctx > 0 and x_min <= args.ctx <= x_max:
        ax.axvline(args.ctx, color="grey", linestyle="--", linewidth=1)
        ax.text(
            args.ctx, 1.0, " trained context %d" % args.ctx, transform=ax.get_xaxis_transform(),
            va="top", ha="left", fontsize=8, color="grey",
        )
    ax.set_yscale("log")
    # Plain numbers on the axis; label the minor ticks too when the range is narrow
    # (under two decades), where a log axis would otherwise show one label or none.
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: "%g" % v)
    ax.yaxis.set_major_formatter(plain)
    y_lo, y_hi = ax.get_ylim()
    if y_hi / y_lo < 100:
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("token index in the stream")
    ax.set_ylabel("perplexity (exp of mean NLL over the last %d tokens)" % args.window)
    if args.title:
        ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, args.png)
    except OSError as e:
        sys.exit("plot-ppl.py: cannot write '%s': %s" % (args.png, e.strerror))


if __name__ == "__main__":
    main()
