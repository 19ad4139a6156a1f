#!/usr/bin/env python3
"""Plots the CSV of `spillway soak --csv` as one SVG, with no dependencies.

    scripts/soak-plot.py SOAK.csv OUT.svg [--title TEXT] [--from TOKENS]

Three panels over stream tokens: per-token latency (median and p99 of each checkpoint's
interval, ms, and the median CPU time where the log has it), resident memory (MiB: all,
its anonymous part where the log has it, and the KV bytes), and the NLL of each interval.
--from leaves out the checkpoints before TOKENS (a first interval that shared the machine
with a build, say). The SVG is written to a temporary name and renamed over OUT.svg.
"""
import argparse
import csv
import os
import sys


def panel(x0, y0, w, h, xs, series, ylabel, xmax, fmt_y):
    """SVG of one panel: series is [(values, colour, label)], sharing the y axis."""
    vals = [v for s, _, _ in series for v in s]
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = 0.08 * (hi - lo)
    lo, hi = (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad
    px = lambda x: x0 + w * x / xmax
    py = lambda y: y0 + h - h * (y - lo) / (hi - lo)
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>']
    for i in range(5):
        y = lo + (hi - lo) * i / 4
        out.append(f'<line x1="{x0}" y1="{py(y):.1f}" x2="{x0 + w}" y2="{py(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 6}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="11">{fmt_y(y)}</text>')
    out.append(f'<text x="{x0 - 52}" y="{y0 + h / 2}" font-size="12" transform="rotate(-90 {x0 - 52} {y0 + h / 2})" text-anchor="middle">{ylabel}</text>')
    for k, (s, colour, label) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, s))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        out.append(f'<text x="{x0 + w - 8}" y="{y0 + 16 + 14 * k}" text-anchor="end" font-size="11" fill="{colour}">{label}</text>')
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("svg")
    ap.add_argument("--title", default="spillway soak")
    ap.add_argument("--from", dest="start", type=int, default=0,
                    help="leave out checkpoints before this many tokens")
    a = ap.parse_args()
    rows = [r for r in csv.DictReader(open(a.csv)) if int(r["tokens"]) >= a.start]
    if len(rows) < 2:
        sys.exit(f"error: {a.csv}: need at least 2 checkpoints, found {len(rows)}")
    xs = [int(r["tokens"]) for r in rows]
    col = lambda k: [float(r[k]) for r in rows]
    mib = lambda k: [float(r[k]) / 2**20 for r in rows]
    has = lambda k: all(r.get(k) for r in rows)  # absent or empty in logs of older binaries
    xmax = xs[-1]
    W, x0, w, h, gap = 760, 80, 640, 150, 40
    H = 60 + 3 * (h + gap) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="14">{a.title}</text>']
    y = 45
    latency = [(col("latency_ms_median"), "#1f77b4", "median"),
               (col("latency_ms_p99"), "#ff7f0e", "p99")]
    if has("cpu_ms_median"):
        latency.append((col("cpu_ms_median"), "#17becf", "CPU time, median"))
    out += panel(x0, y, w, h, xs, latency, "ms per token", xmax, lambda v: f"{v:.1f}")
    y += h + gap
    memory = [(mib("rss_bytes"), "#2ca02c", "RSS")]
    if has("rss_anon_bytes"):
        memory.append((mib("rss_anon_bytes"), "#8c564b", "RSS, anonymous"))
    memory.append((mib("kv_bytes"), "#9467bd", "KV"))
    out += panel(x0, y, w, h, xs, memory, "MiB", xmax, lambda v: f"{v:.1f}")
    y += h + gap
    out += panel(x0, y, w, h, xs, [(col("nll_interval"), "#d62728", "NLL of the interval")],
                 "NLL", xmax, lambda v: f"{v:.2f}")
    for i in range(6):
        x = xmax * i / 5
        out.append(f'<text x="{x0 + w * i / 5:.1f}" y="{y + h + 16}" text-anchor="middle" font-size="11">{int(x):,}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{y + h + 34}" text-anchor="middle" font-size="12">stream tokens</text>')
    out.append("</svg>")
    tmp = f"{a.svg}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, a.svg)


if __name__ == "__main__":
    main()
