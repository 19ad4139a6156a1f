#!/usr/bin/env python3
"""Renders every table and plot of docs/results.md from the sweep
examples/sweeps/results.toml measured into STORE: docs/results/tables.md, summary.json,
commands.txt and the PNG plots (scripts/plot-ppl.py, matplotlib).

    scripts/render-results.py STORE [--out docs/results]
"""

from __future__ import annotations

import argparse
import csv
import math
import pathlib
import subprocess
import sys

from spillway.sweep import Results

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = ROOT / "examples/sweeps/results.toml"
PLOT = ROOT / "scripts/plot-ppl.py"

# Stream sizes of the sweep (tokens); see docs/results.md for why these.
kLong, kFull, kRecFrom, kRecTokens = 20000, 9216, 19000, 512
kShort, kOtherRec, kCtx = 3072, 512, 8192
W, S, F, R = "window:1024", "sink:4+1020", "full", "recompute:1024"
ABS = "sink:4+1020,positions=absolute"
NEWLINES = "\n" * 16


def fmt(x, digits=2):
    return "—" if x is None else "%.*f" % (digits, x)


def rng(lo, hi):
    return "%s..%s" % (format(lo, ","), format(hi - 1, ","))


def pct(x, y):
    return None if x is None or y is None else 100.0 * (x / y - 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--out", default=ROOT / "docs/results", type=pathlib.Path)
    args = ap.parse_args()
    res = Results(SWEEP, args.store)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # The series of each table, by role. A token's NLL depends only on the tokens before
    # it, so the 20,000-token streams serve every range of the shorter ones.
    a = {W: res.series(W, text="austen"), S: res.series(S, text="austen", replace_head=None),
         F: res.series(F, text="austen"), R: res.series(R, text="austen")}
    bcd = {spec: res.series(spec, text="austen", max_tokens=kShort)
           for spec in ("sink:1+1023", "sink:2+1022", "sink:8+1016", ABS, "sink:4+252",
                        "window:256", "sink:4+508", "window:512", "sink:4+2044", "window:2048")}
    e = res.series(S, text="austen", replace_head=NEWLINES)
    other = {t: {spec: res.series(spec, text=t) for spec in (W, S, F, R)}
             for t in ("licenses", "python")}
    cells = {**{("a", k): v for k, v in a.items()}, **{("bcd", k): v for k, v in bcd.items()},
             ("e", S): e,
             **{(t, k): v for t, o in other.items() for k, v in o.items()}}

    summary = {"sizes": {"long_stream": kLong, "full_stream": kFull, "recompute_from": kRecFrom,
                         "recompute_tokens": kRecTokens, "short_stream": kShort,
                         "other_recompute_tokens": kOtherRec},
               "provenance": res.provenance(), "tables": {}}
    md = []

    def table(key, title, header, rows, note=None):
        summary["tables"][key] = {"title": title, "header": header, "rows": rows}
        md.append("### %s\n" % title)
        md.append("| " + " | ".join(header) + " |")
        md.append("|" + "---|" * len(header))
        md.extend("| " + " | ".join(r) + " |" for r in rows)
        if note:
            md.append("\n" + note)
        md.append("")

    def ppl(s, lo, hi):
        return s.ppl(lo, hi) if s.covers(lo, hi) else None

    def paired_text(s, r, lo, hi):
        if not (s.covers(lo, hi) and r.covers(lo, hi)):
            return "—"
        d = [x - y for x, y in zip(s.slice(lo, hi), r.slice(lo, hi))]
        m = sum(d) / len(d)
        var = sum((x - m) ** 2 for x in d) / (len(d) - 1) if len(d) > 1 else 0.0
        return "%+.4f ± %.4f" % (m, math.sqrt(var / len(d)))

    # (a) long stream.
    ranges = [(1024, kCtx), (kCtx, kFull), (kFull, kLong), (1024, kLong)]
    rows = [[spec] + [fmt(ppl(a[spec], lo, hi)) for lo, hi in ranges] +
            [fmt(a[spec].tokens_per_s, 1)] for spec in (W, S, F)]
    rows.append(["window / sink"] + [fmt(a[W].ppl(lo, hi) / a[S].ppl(lo, hi)) for lo, hi in ranges]
                + [""])
    table("a", "(a) Austen: perplexity by token range (targets, 0-based stream index)",
          ["policy"] + [rng(lo, hi) for lo, hi in ranges] + ["tokens/s"], rows,
          "`full` runs %s tokens (its attention cost grows with the span); its cells past that "
          "are empty." % format(kFull, ","))

    lo, hi = kRecFrom, kRecFrom + kRecTokens
    rec = a[R].ppl(lo, hi)
    rows = []
    for spec in (R, S, W):
        p = a[spec].ppl(lo, hi)
        rows.append([spec, fmt(p, 3), fmt(a[spec].mean_nll(lo, hi), 4),
                     "" if spec == R else fmt(pct(p, rec), 1) + " %",
                     "" if spec == R else paired_text(a[spec], a[R], lo, hi)])
    table("a_recompute", "(a) Austen: paired comparison with the recompute oracle on targets %s"
          % rng(lo, hi), ["policy", "perplexity", "mean NLL", "vs recompute:1024",
                          "per-token NLL − recompute's (mean ± s.e.)"], rows)

    # (b) sinks.
    lo, hi = 1024, kShort
    b_specs = [(0, W, a), (1, "sink:1+1023", bcd), (2, "sink:2+1022", bcd), (4, S, a),
               (8, "sink:8+1016", bcd)]
    rows = [[str(n), spec, fmt(src[spec].ppl(lo, hi))] for n, spec, src in b_specs]
    table("b", "(b) Number of sinks at a total cache of 1024, Austen targets %s" % rng(lo, hi),
          ["sinks S", "policy", "perplexity"], rows)

    # (c) cache size.
    lo, hi = 2048, kShort
    rows = []
    for n in (256, 512, 1024, 2048):
        sk, wn = "sink:4+%d" % (n - 4), "window:%d" % n
        src = a if n == 1024 else bcd
        ps, pw = src[sk].ppl(lo, hi), src[wn].ppl(lo, hi)
        rows.append([str(n), fmt(ps), fmt(pw), fmt(pw / ps)])
    table("c", "(c) Cache size, Austen targets %s (past every cache)" % rng(lo, hi),
          ["cache", "sink:4+(cache-4)", "window:cache", "window / sink"], rows)

    # (d) positions, (e) sink content.
    lo, hi = 1024, kShort
    rows = [["cache (StreamingLLM)", S, fmt(a[S].ppl(lo, hi))],
            ["absolute (stream index)", ABS, fmt(bcd[ABS].ppl(lo, hi))]]
    table("d", "(d) RoPE positions of sink:4+1020, Austen targets %s" % rng(lo, hi),
          ["positions", "policy", "perplexity"], rows)
    rows = [["none (window:1024)", fmt(a[W].ppl(lo, hi))],
            ["the text's first 4 tokens", fmt(a[S].ppl(lo, hi))],
            ['4 newline tokens ("\\n\\n\\n\\n" ×4)', fmt(e.ppl(lo, hi))]]
    table("e", "(e) What the 4 sinks hold, sink:4+1020, Austen targets %s" % rng(lo, hi),
          ["sink tokens", "perplexity"], rows)

    # (f) other texts.
    rows = []
    rlo, rhi = kShort - kOtherRec, kShort
    for t, o in other.items():
        pr = o[R].ppl(rlo, rhi)
        rows.append([t, fmt(o[W].ppl(lo, hi)), fmt(o[S].ppl(lo, hi)), fmt(o[F].ppl(lo, hi)),
                     fmt(o[W].ppl(lo, hi) / o[S].ppl(lo, hi)), fmt(pr, 3),
                     fmt(o[S].ppl(rlo, rhi), 3), fmt(o[W].ppl(rlo, rhi), 3),
                     fmt(o[F].ppl(rlo, rhi), 3), fmt(pct(o[S].ppl(rlo, rhi), pr), 1) + " %",
                     paired_text(o[S], o[R], rlo, rhi)])
    table("f", "(f) Other texts: targets %s, and the recompute oracle on targets %s"
          % (rng(1024, kShort), rng(rlo, rhi)),
          ["text", "window:1024", "sink:4+1020", "full", "window / sink", "recompute (sub)",
           "sink (sub)", "window (sub)", "full (sub)", "sink vs recompute",
           "sink − recompute NLL/token"], rows)

    # The criteria of the original experiment, as measured.
    crit = [["Austen: window:1024 / sink:4+1020 past token 1,024",
             fmt(a[W].ppl(1024, kLong) / a[S].ppl(1024, kLong)) + "×"],
            ["Austen: sink:4+1020 vs recompute:1024, targets %s"
             % rng(kRecFrom, kRecFrom + kRecTokens),
             fmt(pct(a[S].ppl(kRecFrom, kRecFrom + kRecTokens), rec), 1) + " %"]]
    for t, o in other.items():
        crit.append(["%s: window:1024 / sink:4+1020 past token 1,024" % t,
                     fmt(o[W].ppl(1024, kShort) / o[S].ppl(1024, kShort)) + "×"])
        crit.append(["%s: sink:4+1020 vs recompute:1024, targets %s" % (t, rng(rlo, rhi)),
                     fmt(pct(o[S].ppl(rlo, rhi), o[R].ppl(rlo, rhi)), 1) + " %"])
    summary["tables"]["criteria"] = {"rows": crit}
    md.append("### The criteria, as measured\n")
    md.append("| quantity | value |\n|---|---|")
    md.extend("| %s | %s |" % tuple(r) for r in crit)
    md.append("")

    # Timing, and where the numbers came from.
    rows = [[f"{k[0]}", s.spec + (" (4 newline sinks)" if k[0] == "e" else ""),
             str(len(s.nll)), fmt(s.seconds, 0), fmt(s.tokens_per_s, 1),
             fmt(s.seconds / len(s.nll), 2)] for k, s in cells.items()]
    prov = summary["provenance"]
    table("timing", "Run times (%s thread(s) per cell, two cells at once on 2 cores)"
          % ", ".join(map(str, prov["threads"])),
          ["group", "policy", "scored", "seconds", "stream tokens / s", "s / scored token"], rows,
          "Stream tokens / s counts every token of the stream, also those before the first "
          "scored one (which replaying policies skip), so for recompute read the last column. "
          f"{res.provenance_text()}.")

    res.write_page(out, "tables.md", "\n".join(md) + "\n", summary)
    print("\n".join(md))

    plots = pathlib.Path(args.store) / "plots"
    plots.mkdir(exist_ok=True)

    def plot(name, cols, title, extra=()):
        """cols: (label, Series, lo, hi): the NLLs of targets [lo, hi) of each series."""
        idx = sorted({i for _, s, lo, hi in cols
                      for i in range(max(lo, s.first), min(hi, s.first + len(s.nll)))})
        path = plots / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["token"] + [c[0] for c in cols])
            for i in idx:
                row = [i]
                for _, s, lo, hi in cols:
                    k = i - s.first
                    row.append("%.6f" % s.nll[k] if lo <= i < hi and 0 <= k < len(s.nll)
                               else "")
                w.writerow(row)
        subprocess.run([sys.executable, str(PLOT), str(path), str(out / f"{name}.png"),
                        "--title", title, *extra], check=True)

    big = 10**9
    plot("austen-stream", [(W, a[W], 0, big), (S, a[S], 0, big), (F, a[F], 0, big)],
         "SmolLM2-135M on Austen: %s tokens" % format(kLong, ","))
    plot("austen-recompute", [(R, a[R], 0, big), (S, a[S], kRecFrom, kRecFrom + kRecTokens),
                              (W, a[W], kRecFrom, kRecFrom + kRecTokens)],
         "Austen targets %s, sliding mean of 32" % rng(kRecFrom, kRecFrom + kRecTokens),
         ["--window", "32"])
    plot("austen-sinks", [(spec, src[spec], 0, kShort) for _, spec, src in b_specs],
         "Number of sinks at a cache of 1024 (Austen)", ["--from", "768"])
    plot("austen-cache", [(sp, (a if n == 1024 else bcd)[sp], 0, kShort)
                          for n in (256, 512, 1024, 2048)
                          for sp in ("sink:4+%d" % (n - 4), "window:%d" % n)],
         "Cache size: sink:4+(C-4) vs window:C (Austen)", ["--from", "200"])
    plot("austen-positions-head", [(W, a[W], 0, kShort), (S, a[S], 0, kShort),
                                   (ABS, bcd[ABS], 0, kShort),
                                   ("sink:4+1020, 4 newline tokens as sinks", e, 0, kShort)],
         "Sink positions and content, cache 1024 (Austen)", ["--from", "768"])
    for t, o in other.items():
        plot("other-" + t, [(W, o[W], 0, big), (S, o[S], 0, big), (F, o[F], 0, big)],
             "SmolLM2-135M on other-%s.txt: %s tokens" % (t, format(kShort, ",")))
    print(f"wrote {out}/summary.json, tables.md, commands.txt and the plots")


if __name__ == "__main__":
    main()
