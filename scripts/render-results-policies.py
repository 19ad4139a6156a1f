#!/usr/bin/env python3
"""Renders the policy ranking of docs/results.md from the sweep
examples/sweeps/results-policies.toml measured into STORE: docs/results/policies/table.md
and summary.json (each policy paired token by token with recompute:C).

    scripts/render-results-policies.py STORE [--out docs/results/policies]
"""

from __future__ import annotations

import argparse
import math
import pathlib

from spillway.sweep import Results, paired

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = ROOT / "examples/sweeps/results-policies.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--out", default=ROOT / "docs/results/policies", type=pathlib.Path)
    args = ap.parse_args()
    res = Results(SWEEP, args.store)
    lines = ["| text | cache | policy | ppl | ratio to recompute (95 % CI) | tokens/s | peak KV |",
             "|---|---:|---|---:|---|---:|---:|"]
    summary = []
    groups = []  # (text, cache) in the sweep's order
    for c in res.sweep.cells:
        if c.cache is not None and (c.text.name, c.cache) not in groups:
            groups.append((c.text.name, c.cache))
    for text, cache in groups:
        rec = res.series(f"recompute:{cache}", text=text)
        lo, hi = rec.first, rec.first + len(rec.nll)
        rows = []
        for cell in res.cells(text=text, measure="ppl"):
            if cell.cache != cache:
                continue
            s = res.series(cell.spec, text=text)
            m, se = paired(s, rec, lo, hi)
            rows.append((s.ppl(lo, hi), cell.spec, s, m, se))
        rows.sort(key=lambda r: r[0])
        for ppl, spec, s, m, se in rows:
            ci = "—" if spec.startswith("recompute") else \
                f"{math.exp(m):.3f} ({math.exp(m - 1.96 * se):.3f}..{math.exp(m + 1.96 * se):.3f})"
            lines.append(f"| {text} | {cache} | `{spec}` | {ppl:.3f} | {ci} | "
                         f"{s.tokens_per_s:.1f} | {s.figures['kv_bytes_peak'] / 2**20:.1f} MiB |")
            prov = s.record["provenance"]
            summary.append({"text": text, "cache": cache, "spec": spec, "ppl": ppl,
                            "mean_nll_diff_vs_recompute": m, "se": se, "tokens": len(s.nll),
                            "tokens_per_s": s.tokens_per_s,
                            "kv_bytes_peak": s.figures["kv_bytes_peak"],
                            "commit": prov["commit"], "kernel_isa": prov["kernel_isa"],
                            "threads": prov["threads"], "key": s.record["key"]})
    lines.append("")
    lines.append(f"{res.provenance_text()} (tokens/s: cells shared the machine with another "
                 f"cell).")
    res.write_page(args.out, "table.md", "\n".join(lines) + "\n", summary)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
