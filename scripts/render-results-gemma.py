#!/usr/bin/env python3
"""Renders the Gemma 3 270M tables of docs/results-gemma.md from the sweep
examples/sweeps/results-gemma.toml measured into STORE: docs/results/gemma/tables.md,
summary.json and commands.txt.

    scripts/render-results-gemma.py STORE [--out docs/results/gemma]
"""

from __future__ import annotations

import argparse
import pathlib

from spillway.sweep import Results, paired

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = ROOT / "examples/sweeps/results-gemma.toml"
kScoreFrom, kStream, kRecFrom = 1024, 3072, 2816


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--out", default=ROOT / "docs/results/gemma", type=pathlib.Path)
    args = ap.parse_args()
    res = Results(SWEEP, args.store)

    def series(spec, score_from=kScoreFrom):
        return res.series(spec, score_from=score_from)

    def ppl(spec):
        return series(spec).ppl(kScoreFrom, kStream)

    lines, summary = [], {}

    def table(title, header, rows):
        lines.append(f"### {title}\n")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines.extend("| " + " | ".join(r) + " |" for r in rows)
        lines.append("")

    targets = f"targets {kScoreFrom:,}..{kStream - 1:,}"
    full = ppl("full")
    rows = []
    for spec in ("full", "window:256", "sink:4+252", "window:1024", "sink:4+1020"):
        v = ppl(spec)
        summary[spec] = v
        rows.append([f"`{spec}`", f"{v:.3f}", f"{100 * (v / full - 1):+.1f} %",
                     f"{series(spec).figures['kv_bytes_peak'] / 2**20:.1f}"])
    table(f"Policies past the cache, {targets}", ["policy", "ppl", "vs full", "KV MiB (peak)"],
          rows)

    rows = []
    for s, spec in ((0, "window:256"), (1, "sink:1+255"), (2, "sink:2+254"), (4, "sink:4+252"),
                    (8, "sink:8+248"), (16, "sink:16+240")):
        summary[spec] = v = ppl(spec)
        rows.append([str(s), f"`{spec}`", f"{v:.3f}"])
    table(f"Number of sinks at a global cache of 256, {targets}", ["sinks", "policy", "ppl"],
          rows)

    rows = []
    for w in (64, 128, 256, 512, 1024):
        win, snk = ppl(f"window:{w}"), ppl(f"sink:4+{w - 4}")
        summary[f"window:{w}"], summary[f"sink:4+{w - 4}"] = win, snk
        rows.append([str(w), f"{win:.3f}", f"{snk:.3f}", f"{100 * (win / snk - 1):+.1f} %"])
    table(f"Global cache size, local layers native, {targets}",
          ["cache", "window:W", "sink:4+(W-4)", "window vs sink"], rows)

    rows = []
    for w in (256, 1024):
        pol_w, pol_s = ppl(f"window:{w},local=policy"), ppl(f"sink:4+{w - 4},local=policy")
        summary[f"window:{w},local=policy"], summary[f"sink:4+{w - 4},local=policy"] = \
            pol_w, pol_s
        rows.append([str(w), f"{ppl(f'window:{w}'):.3f}", f"{ppl(f'sink:4+{w - 4}'):.3f}",
                     f"{pol_w:.3f}", f"{pol_s:.3f}"])
    table(f"Local layers native vs under the policy, {targets}",
          ["cache", "window, local native", "sink, local native", "window, local=policy",
           "sink, local=policy"], rows)

    rec = series("recompute:256", kRecFrom)
    rows = []
    for spec in ("recompute:256", "sink:4+252", "window:256"):
        s = series(spec, kRecFrom)
        m, se = paired(s, rec, kRecFrom, kStream)
        v = s.ppl(kRecFrom, kStream)
        summary[f"paired {spec}"] = {"ppl": v, "mean_nll_diff": m, "se": se}
        rows.append([f"`{spec}`", f"{v:.3f}", "—" if spec == "recompute:256" else
                     f"{m:+.4f} ± {1.96 * se:.4f}", f"{s.tokens_per_s:.1f}"])
    table(f"Paired with the recompute oracle, targets {kRecFrom:,}..{kStream - 1:,} "
          f"({kStream - kRecFrom} tokens)",
          ["policy", "ppl", "mean NLL − recompute (95 % CI)", "tokens/s"], rows)

    summary["provenance"] = res.provenance()
    lines.append(f"{res.provenance_text()}.")
    res.write_page(args.out, "tables.md", "\n".join(lines) + "\n", summary)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
