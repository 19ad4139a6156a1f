#!/usr/bin/env python3
"""Summaries of the `spillway sinks` runs of scripts/make-sinks-doc.sh (docs/sinks.md).

Usage: RAW=build/sinks-raw OUT=docs/sinks sinks-summary.py

Reads RAW/NAME.json (each run's --json) and OUT/commands.txt; writes
  OUT/runs/NAME.json  the run's statistics rounded to 3 significant digits, the
                      per-token arrays (mass by stream index / cache position, hidden
                      norms) cut to their first 16 entries, alpha_k for k <= 3
  OUT/summary.json    every number docs/sinks.md quotes, each under the run names (and
                      so the commands) it comes from
  OUT/tables.md       the tables of the page, as printed
Python standard library only.

Notation: alpha(l, h, k) is Gu et al.'s sink score of stream index k (0-based): the mean
over the recorded queries i >= k of the attention A[i][k]. `spillway sinks` writes
alpha1 (k = 0) and alpha_k["k"] for k = 1..7 as [layer][head] tables, and per layer the
mean over heads and queries of the mass on each stream index and each cache position.
Differences of two runs of the same stream cut at n1 < n2 tokens give the queries
n1..n2-1 alone (the attention of a query depends only on the tokens before it).
"""

import json
import math
import os
import statistics

RAW = os.environ.get("RAW", "build/sinks-raw")
OUT = os.environ.get("OUT", "docs/sinks")
EPS = 0.3
kCut = 16  # per-token entries kept in runs/NAME.json

commands = {}
with open(os.path.join(OUT, "commands.txt")) as f:
    for line in f:
        name, _, cmd = line.rstrip("\n").partition(": ")
        commands[name] = cmd

runs = {}
for name in commands:
    path = os.path.join(RAW, name + ".json")
    if os.path.exists(path):
        with open(path) as f:
            runs[name] = json.load(f)


def seconds(name):
    p = os.path.join(RAW, name + ".seconds")
    return int(open(p).read()) if os.path.exists(p) else None


def rnd(x, sig=4):
    if isinstance(x, float):
        if math.isnan(x) or x == 0:
            return x if x == 0 else None
        return round(x, sig - 1 - int(math.floor(math.log10(abs(x)))))
    if isinstance(x, list):
        return [rnd(v, sig) for v in x]
    if isinstance(x, dict):
        return {k: rnd(v, sig) for k, v in x.items()}
    return x


# Compact per-run JSON.
for name, d in runs.items():
    c = dict(d)
    for key in ("mass_by_stream", "mass_by_rank", "hidden_norm"):
        c[key] = [row[:kCut] for row in d[key]]
    c["per_token_arrays_cut_to"] = kCut
    if d["tokens"] == 64:
        del c["alpha1_first_64"]  # the same as alpha1
    c["alpha_k"] = {k: v for k, v in d["alpha_k"].items() if int(k) <= 3}
    if "ablation" in c:
        c["ablation"] = {k: v for k, v in c["ablation"].items()}
    c["command"] = commands[name]
    with open(os.path.join(OUT, "runs", name + ".json"), "w") as f:
        json.dump(rnd(c, 3), f, separators=(",", ":"))
        f.write("\n")

summary = {"commands": commands, "seconds": {n: seconds(n) for n in runs}}
tables = []


def table(title, header, rows, names):
    lines = ["### " + title, ""]
    lines += ["```"] + ["$ " + commands[n] for n in names] + ["```", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    lines.append("")
    tables.append("\n".join(lines))


def f2(x):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else "%.2f" % x


def f3(x):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else "%.3f" % x


def pct(x):
    return "%.1f %%" % x


def flat(t):
    return [x for row in t for x in row]


def rate(t, eps=EPS, heads=None):
    xs = flat(t) if heads is None else [t[l][h] for l, h in heads]
    return 100.0 * sum(1 for x in xs if x is not None and x > eps) / len(xs)


def mean(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def alpha(d, k):
    """[layer][head] sink score of stream index k (k <= 7)."""
    return d["alpha1"] if k == 0 else d["alpha_k"][str(k)]


def alpha_sum(d, k):
    """Sum over recorded queries i >= k of A[i][k], [layer][head]."""
    n = d["tokens"] - k
    return [[(x or 0.0) * n for x in row] for row in alpha(d, k)]


def alpha_between(d1, d2, k):
    """Mean A[i][k] over the queries d1.tokens .. d2.tokens-1 of the same stream."""
    a1, a2 = alpha_sum(d1, k), alpha_sum(d2, k)
    n = d2["tokens"] - d1["tokens"]
    return [[(y - x) / n for x, y in zip(r1, r2)] for r1, r2 in zip(a1, a2)]


def mass_between(d1, d2, key):
    """Per layer, mean over heads of the mass by stream index / cache position, over the
    queries d1.tokens .. d2.tokens-1 (each row sums to 1)."""
    n1, n2 = d1["tokens"], d2["tokens"]
    out = []
    for r1, r2 in zip(d1[key], d2[key]):
        row = [v * n2 for v in r2]
        for i, v in enumerate(r1):
            row[i] -= v * n1
        out.append([v / (n2 - n1) for v in row])
    return out


def gu_alpha_layer(d, l, k):
    """Mean over heads of alpha(l, ., k) for any k, from the per-layer mass."""
    n = d["tokens"]
    return d["mass_by_stream"][l][k] * n / (n - k)


def hidden_ratio(d, l, k):
    hn = d["hidden_norm"][l]
    return hn[k] / statistics.median(hn)


def local_layers(d):
    return [lj["layer"] for lj in d["layers"] if lj["local_window"] > 0]


def global_layers(d):
    return [lj["layer"] for lj in d["layers"] if lj["local_window"] == 0]


def heads_of(d, layers):
    return [(l, h) for l in layers for h in range(d["n_head"])]


# ---------------------------------------------------------------------------------
# 1. Sink rate and where the mass goes.
S = summary["rates"] = {}
rows = []
for name in ("smol-64", "smol-512", "gemma-64", "gemma-512", "gemma-1024"):
    if name not in runs:
        continue
    d = runs[name]
    e = {
        "first_64": {str(eps): rate(d["alpha1_first_64"], eps) for eps in (0.1, 0.3, 0.5)},
        "stream": {str(eps): rate(d["alpha1"], eps) for eps in (0.1, 0.3, 0.5)},
        "tokens": d["tokens"],
        "alpha1_mean": mean(flat(d["alpha1"])),
        "detected_sinks": d["detected_sinks"],
    }
    if local_layers(d):
        for part, ls in (("local", local_layers(d)), ("global", global_layers(d))):
            hs = heads_of(d, ls)
            e[part] = {
                "rate_first_64": rate(d["alpha1_first_64"], EPS, hs),
                "rate_stream": rate(d["alpha1"], EPS, hs),
                "alpha1_mean": mean([d["alpha1"][l][h] for l, h in hs]),
            }
    S[name] = e
    rows.append([name, d["tokens"], pct(e["first_64"]["0.1"]), pct(e["first_64"]["0.3"]),
                 pct(e["first_64"]["0.5"]), pct(e["stream"]["0.3"]), f3(e["alpha1_mean"]),
                 " ".join("%d (%d)" % (s["stream_index"], s["heads_over_eps"])
                          for s in d["detected_sinks"][:4])])
table("1. Sink rate (share of heads with alpha_1 > eps)",
      ["run", "tokens", "first 64, eps 0.1", "first 64, eps 0.3", "first 64, eps 0.5",
       "whole stream, eps 0.3", "mean alpha_1", "detected sinks (heads > 0.3)"],
      rows, [n for n in ("smol-64", "smol-512", "gemma-64", "gemma-512", "gemma-1024")])

# Gemma: local vs global heads, and the local heads after token 0 leaves their window.
if "gemma-512" in runs and "gemma-1024" in runs:
    g64, g512, g1024 = runs["gemma-64"], runs["gemma-512"], runs["gemma-1024"]
    late = mass_between(g512, g1024, "mass_by_stream")
    late_rank = mass_between(g512, g1024, "mass_by_rank")
    a0_late = alpha_between(g512, g1024, 0)
    rows = []
    G = summary["gemma_layers"] = []
    for lj in g64["layers"]:
        l = lj["layer"]
        top = sorted(range(1, len(late[l])), key=lambda k: -late[l][k])[:3]
        rr = late_rank[l]
        e = {
            "layer": l, "local": lj["local_window"],
            "alpha1_first_64": mean(g64["alpha1"][l]),
            "alpha1_queries_0_511": mean(g512["alpha1"][l]),
            "stream0_queries_512_1023": mean(a0_late[l]),
            "oldest_rank_queries_512_1023": rr[0],
            "last4_ranks_queries_512_1023": sum(rr[len(rr) - 4:]) if lj["local_window"] else None,
            "top_stream_queries_512_1023": [[k, late[l][k]] for k in top],
            "norm0_ratio": lj["first_token_norm_ratio"],
            "v0_ratio": lj["first_token_value_norm"] / lj["other_value_norm_median"],
        }
        # Local layers: the span of a query past 511 has exactly 512 keys, ranks 0..511.
        if lj["local_window"]:
            e["last4_ranks_queries_512_1023"] = sum(rr[508:512])
        else:
            e["last4_ranks_queries_512_1023"] = None
        G.append(e)
        rows.append([l, lj["local_window"] or "global", f3(e["alpha1_first_64"]),
                     f3(e["alpha1_queries_0_511"]), f3(e["stream0_queries_512_1023"]),
                     f3(e["oldest_rank_queries_512_1023"]),
                     f3(e["last4_ranks_queries_512_1023"]),
                     " ".join("%d (%.3f)" % (k, v) for k, v in e["top_stream_queries_512_1023"]),
                     f2(e["norm0_ratio"]), f2(e["v0_ratio"])])
    table("1. Gemma 3 270M by layer: token 0 in and out of the local window",
          ["layer", "window", "alpha_1 first 64", "alpha_1 queries 0..511",
           "mass on index 0, queries 512..1023", "mass on oldest cached, 512..1023",
           "mass on 4 newest, 512..1023", "top other stream indices 512..1023",
           "norm(0)/median", "v(0)/median v"],
          rows, ["gemma-64", "gemma-512", "gemma-1024"])

# SmolLM2 per layer: first 64 vs 512, massive activations and value norms, secondary sinks.
if "smol-64" in runs and "smol-512" in runs:
    s64, s512 = runs["smol-64"], runs["smol-512"]
    rows = []
    L = summary["smol_layers"] = []
    for lj, lj5 in zip(s64["layers"], s512["layers"]):
        l = lj["layer"]
        e = {
            "layer": l,
            "alpha1_first_64": lj["alpha1_mean"],
            "heads_over_eps_first_64": sum(1 for x in s64["alpha1"][l] if x > EPS),
            "alpha1_512": lj5["alpha1_mean"],
            "alpha_25_512": gu_alpha_layer(s512, l, 25),
            "alpha_58_512": gu_alpha_layer(s512, l, 58),
            "alpha_215_512": gu_alpha_layer(s512, l, 215),
            "norm0_ratio_512": lj5["first_token_norm_ratio"],
            "norm25_ratio_512": hidden_ratio(s512, l, 25),
            "norm58_ratio_512": hidden_ratio(s512, l, 58),
            "v0_ratio_512": lj5["first_token_value_norm"] / lj5["other_value_norm_median"],
            "key0_cos_mean_key": lj5["key0_cos_mean_key"],
        }
        L.append(e)
        rows.append([l, f3(e["alpha1_first_64"]), "%d/9" % e["heads_over_eps_first_64"],
                     f3(e["alpha1_512"]), f3(e["alpha_25_512"]), f3(e["alpha_58_512"]),
                     "%.1f" % e["norm0_ratio_512"], "%.1f" % e["norm25_ratio_512"],
                     "%.1f" % e["norm58_ratio_512"], f2(e["v0_ratio_512"]),
                     f2(mean(e["key0_cos_mean_key"]))])
    table("1. SmolLM2-135M by layer",
          ["layer", "alpha_1 first 64", "heads > 0.3", "alpha_1 512",
           "alpha_25 512", "alpha_58 512", "norm(0)/median", "norm(25)/median",
           "norm(58)/median", "v(0)/median v", "cos(k0, mean k)"],
          rows, ["smol-64", "smol-512"])
    norms = [e["norm0_ratio_512"] for e in L]
    summary["smol_massive"] = {
        "max_norm0_ratio": max(norms), "layer_of_max": norms.index(max(norms)),
        "layers_over_100": [e["layer"] for e in L if e["norm0_ratio_512"] > 100],
        "v0_ratio_range_layers_3_29": [min(e["v0_ratio_512"] for e in L[3:]),
                                       max(e["v0_ratio_512"] for e in L[3:])],
    }

# ---------------------------------------------------------------------------------
# 2. Ablation.
def ablation_summary(name, n_top=15):
    d = runs[name]
    a = d["ablation"]
    H = d["n_head"]
    e = {k: a[k] for k in ("policy", "score_from", "scored_tokens", "base_mean_nll",
                          "all_heads_delta", "seconds")}
    e["layer_delta"] = a.get("layer_delta")
    if a.get("layer_delta"):
        ld = [x if x is not None else float("nan") for x in a["layer_delta"]]
        ok = [(x, l) for l, x in enumerate(ld) if not math.isnan(x)]
        e["layers_by_delta"] = [[l, x] for x, l in sorted(ok, reverse=True)[:6]]
        e["sum_of_layer_deltas"] = sum(x for x, _ in ok)
    if "head_delta" in a:
        delta = flat(a["head_delta"])
        mass = flat(a["sink_mass"])
        idx = [i for i, x in enumerate(delta) if x is not None]
        by_delta = sorted(idx, key=lambda i: -delta[i])
        by_mass = sorted([i for i in idx if mass[i] is not None], key=lambda i: -mass[i])
        hid = [a["sink_hidden_ratio"][i // H] for i in range(len(delta))]
        by_hidden = sorted(idx, key=lambda i: -hid[i])
        rank_mass = {i: r + 1 for r, i in enumerate(by_mass)}
        rank_hidden_layer = {l: r + 1 for r, l in enumerate(
            sorted(set(i // H for i in idx), key=lambda l: -a["sink_hidden_ratio"][l]))}
        e["top_heads"] = [{"head": "%d:%d" % (i // H, i % H), "delta": delta[i],
                           "sink_mass": mass[i], "mass_rank": rank_mass.get(i),
                           "hidden_ratio": hid[i],
                           "hidden_layer_rank": rank_hidden_layer[i // H]}
                          for i in by_delta[:n_top]]
        e["spearman"] = a.get("spearman")
        e["heads_ablated"] = len(idx)
        e["heads_delta_over_0.01"] = sum(1 for i in idx if delta[i] > 0.01)
        e["heads_delta_below_-0.005"] = sum(1 for i in idx if delta[i] < -0.005)
        e["sum_of_head_deltas"] = sum(delta[i] for i in idx)
        for k in (10, 30):
            td, tm = set(by_delta[:k]), set(by_mass[:k])
            e["top%d_overlap_delta_mass" % k] = len(td & tm)
        e["top10_by_mass"] = [["%d:%d" % (i // H, i % H), mass[i], delta[i]] for i in by_mass[:10]]
        e["heads_mass_over_0.5_delta_under_0.005"] = sum(
            1 for i in idx if mass[i] is not None and mass[i] > 0.5 and delta[i] < 0.005)
        e["heads_mass_over_0.5"] = sum(1 for i in idx if mass[i] is not None and mass[i] > 0.5)
    e["spearman_layers"] = a.get("spearman_layers")
    e["sink_hidden_ratio"] = a["sink_hidden_ratio"]
    return e


A = summary["ablation"] = {}
for name in ("smol-ablate", "smol-ablate-60", "smol-ablate-18-skip2000", "gemma-ablate-global",
             "gemma-ablate-policy"):
    if name in runs:
        A[name] = ablation_summary(name)
rows = []
for name, e in A.items():
    rows.append([name, e["policy"], e["scored_tokens"], "%.4f" % e["base_mean_nll"],
                 "%+.4f" % e["all_heads_delta"],
                 " ".join("%d:%+.3f" % (l, x) for l, x in e.get("layers_by_delta", [])[:4]),
                 "%.0f" % e["seconds"]])
table("2. Sink ablation: mean NLL change of the scored tokens",
      ["run", "policy", "scored", "base NLL", "every head without sinks",
       "largest layers (all heads of the layer)", "seconds"], rows, list(A))
for name, e in A.items():
    if "top_heads" not in e:
        continue
    rows = [[i + 1, t["head"], "%+.4f" % t["delta"], f3(t["sink_mass"]), t["mass_rank"],
             "%.1f" % t["hidden_ratio"], t["hidden_layer_rank"]]
            for i, t in enumerate(e["top_heads"])]
    sp, spl = e["spearman"], e["spearman_layers"] or {}
    rows.append(["", "Spearman (heads)", "dNLL~mass %.2f" % sp["delta_vs_mass"],
                 "dNLL~hidden %.2f" % sp["delta_vs_hidden"],
                 "mass~hidden %.2f" % sp["mass_vs_hidden"], "", ""])
    if spl and spl.get("delta_vs_mass") is not None:
        rows.append(["", "Spearman (layers)", "dNLL~mass %.2f" % spl["delta_vs_mass"],
                     "dNLL~hidden %.2f" % spl["delta_vs_hidden"],
                     "mass~hidden %.2f" % spl["mass_vs_hidden"], "", ""])
    table("2. %s: heads ranked by causal dependence" % name,
          ["rank", "head", "dNLL", "sink mass", "rank by mass", "sink hidden ratio",
           "layer rank by hidden ratio"], rows, [name])

# ---------------------------------------------------------------------------------
# 3(a) Role vs location.
def first_content(d):
    """Stream index of the first text token: after BOS and any prefix."""
    s = d["stream"]
    i = 1 if s.startswith("BOS") else 0
    if "prefix (" in s:
        i += int(s.split("prefix (")[1].split(" ")[0])
    if "random tokens" in s:
        i += int(s.split(" random tokens")[0].split("+ ")[-1])
    return i


def role_row(name):
    d = runs[name]
    fc = first_content(d)
    L = d["n_layer"]
    al = {k: mean(flat(alpha(d, k))) for k in range(8)}
    best = max(range(1, 8), key=lambda k: al[k])
    # Massive activation: the stream index with the largest hidden norm, per layer, in
    # the layers where token 0 is massive in the plain stream (SmolLM2 12..28; Gemma 1..16).
    mid = range(12, 29) if L == 30 else range(1, 17)
    where = {}
    for l in mid:
        hn = d["hidden_norm"][l]
        k = max(range(len(hn)), key=lambda i: hn[i])
        where[k] = where.get(k, 0) + 1
    k_mass = max(where, key=lambda k: where[k])
    hn_ratio = mean([hidden_ratio(d, l, k_mass) for l in mid])
    e = {
        "stream": d["stream"], "first_content_index": fc,
        "rate_first_64": d["sink_rate"]["first_64"],
        "alpha_mean_by_index": [al[k] for k in range(8)],
        "alpha_index0": al[0], "best_other_index": best, "alpha_best_other": al[best],
        "alpha_first_content": al[fc] if fc < 8 else None,
        "heads_over_eps_by_index": [sum(1 for x in flat(alpha(d, k)) if x > EPS) for k in range(8)],
        "detected_sinks": d["detected_sinks"],
        "massive_index": k_mass, "massive_index_layers": where[k_mass],
        "massive_ratio_mean": hn_ratio,
    }
    return e


R = summary["role"] = {}
role_names = [n for n in runs if any(n.startswith(p) for p in (
    "smol-64", "gemma-64", "smol-skip", "gemma-skip", "smol-prefix", "gemma-prefix",
    "smol-random", "gemma-random", "gemma-nobos"))]
role_names = [n for n in role_names if runs[n]["tokens"] == 64]
rows = []
for name in role_names:
    e = R[name] = role_row(name)
    rows.append([name, e["stream"].replace(" of data/austen.txt", ""), pct(e["rate_first_64"]),
                 e["first_content_index"], f3(e["alpha_index0"]),
                 "%d: %s" % (e["best_other_index"], f3(e["alpha_best_other"])),
                 " ".join("%d (%d)" % (s["stream_index"], s["heads_over_eps"])
                          for s in e["detected_sinks"][:4]),
                 "%d (%d layers, %.0fx)" % (e["massive_index"], e["massive_index_layers"],
                                            e["massive_ratio_mean"])])
table("3(a) Where the sink sits when the stream starts elsewhere (first 64 tokens)",
      ["run", "stream", "sink rate (index 0)", "first text token at", "mean alpha index 0",
       "largest mean alpha at 1..7", "detected sinks (heads > 0.3)",
       "largest hidden norm: index (layers, x median)"], rows, role_names)

# The lone-space sink elsewhere.
lone = summary["lone_space"] = {}
for name, k in (("smol-64", 25), ("smol-skip-10", 15), ("smol-skip-2170", 26),
                ("smol-skip-1800", 396), ("smol-512", 25), ("smol-512", 58),
                ("smol-512", 215), ("smol-512", 41)):
    if name not in runs:
        continue
    d = runs[name]
    lone["%s@%d" % (name, k)] = {
        "alpha_layers_3_9": mean([gu_alpha_layer(d, l, k) for l in range(3, 10)]),
        "norm_ratio_layers_3_9": mean([hidden_ratio(d, l, k) for l in range(3, 10)]),
        "norm_ratio_layer_14": hidden_ratio(d, 14, k),
    }

# ---------------------------------------------------------------------------------
# 3(b) After eviction: window policies, queries past the window alone.
def fixed_span(d, l):
    """Does every query past the first W of this run see exactly W keys in layer l?"""
    p = d["policy"]
    if p.startswith("full"):
        return False
    if d["layers"][l]["local_window"] and "local=policy" not in p:
        return False
    return True


def evicted(name_short, name_long):
    d1, d2 = runs[name_short], runs[name_long]
    W = d1["tokens"]
    by_rank = mass_between(d1, d2, "mass_by_rank")
    by_stream = mass_between(d1, d2, "mass_by_stream")
    out = []
    for l in range(d1["n_layer"]):
        r = by_rank[l]
        top = sorted(range(len(by_stream[l])), key=lambda k: -by_stream[l][k])[:3]
        # The 4 newest keys are the last 4 ranks only where every query's span has W keys.
        e = {"layer": l, "rank0": r[0], "ranks1_3": sum(r[1:4]),
             "newest4": sum(r[W - 4:W]) if fixed_span(d1, l) else None,
             "top_rank": max(range(W), key=lambda i: r[i]),
             "top_stream": [[k, by_stream[l][k]] for k in top]}
        out.append(e)
    return out


B = summary["evicted"] = {}
pairs = [("window64", "smol-window64-64", "smol-window64-256"),
         ("window64-abs", "smol-window64-abs-64", "smol-window64-abs-256"),
         ("window256", "smol-window256-256", "smol-window256-1024"),
         ("window256-abs", "smol-window256-abs-256", "smol-window256-abs-1024"),
         ("sink1+63", "smol-sink1-64", "smol-sink1-256"),
         ("sink4+60", "smol-sink4-64", "smol-sink4-256"),
         ("full-64..255", "smol-64", "smol-full-256"),
         ("full-256..1023", "smol-full-256", "smol-full-1024"),
         ("gemma-window64", "gemma-window64-64", "gemma-window64-256"),
         ("gemma-window64-policy", "gemma-window64-policy-64", "gemma-window64-policy-256"),
         ("gemma-full-64..255", "gemma-64", "gemma-full-256")]
for key, a, b in pairs:
    if a in runs and b in runs:
        B[key] = {"runs": [a, b], "layers": evicted(a, b)}


def band(rows_, lo, hi, field):
    return mean([rows_[l][field] for l in range(lo, hi)])


bands_smol = [(0, 3), (3, 11), (11, 12), (12, 30)]
rows = []
for key in ("full-64..255", "window64", "window64-abs", "sink1+63", "sink4+60",
            "full-256..1023", "window256", "window256-abs"):
    if key not in B:
        continue
    ls = B[key]["layers"]
    cells = []
    for lo, hi in bands_smol:
        cells.append("%s / %s / %s" % (f3(band(ls, lo, hi, "rank0")),
                                       f3(band(ls, lo, hi, "ranks1_3")),
                                       f3(band(ls, lo, hi, "newest4"))))
    rows.append([key, B[key]["runs"][1]] + cells)
table("3(b) Queries past the window: mass on the oldest cached token / the next 3 / the 4 newest, "
      "mean over the layers of each band",
      ["policy", "run", "layers 0-2", "layers 3-10", "layer 11", "layers 12-29"], rows,
      [r for k in B for r in B[k]["runs"]])

# Per-layer, window:64 vs sink:4+60 vs full, rank 0 share.
rows = []
keys = [k for k in ("full-64..255", "window64", "window64-abs", "sink1+63", "sink4+60") if k in B]
for l in range(30):
    rows.append([l] + [f3(B[k]["layers"][l]["rank0"]) for k in keys])
table("3(b) SmolLM2 by layer, queries 64..255: mass on cache position 0 (oldest)",
      ["layer"] + keys, rows, [r for k in keys for r in B[k]["runs"]])

rows = []
keys = [k for k in ("gemma-full-64..255", "gemma-window64", "gemma-window64-policy") if k in B]
for l in range(18):
    rows.append([l, runs["gemma-64"]["layers"][l]["local_window"] or "global"] +
                [f3(B[k]["layers"][l]["rank0"]) for k in keys])
table("3(b) Gemma 3 by layer, queries 64..255: mass on cache position 0 (oldest)",
      ["layer", "window"] + keys, rows, [r for k in keys for r in B[k]["runs"]])

# 3(c) sink:S+W, head by head: where the mass sits for queries 64..255.
C = summary["sinks_per_head"] = {}
for s, a, b in ((1, "smol-sink1-64", "smol-sink1-256"), (4, "smol-sink4-64", "smol-sink4-256"),
                (0, "smol-64", "smol-full-256")):
    if a not in runs or b not in runs:
        continue
    d1, d2 = runs[a], runs[b]
    per_k = [alpha_between(d1, d2, k) for k in range(4)]
    L, H = d1["n_layer"], d1["n_head"]
    counts = {"index0_over_eps": 0, "index1_3_over_eps": 0, "sinks_total_over_eps": 0}
    where = {0: 0, 1: 0, 2: 0, 3: 0}
    tot = []
    for l in range(L):
        for h in range(H):
            v = [per_k[k][l][h] for k in range(4)]
            counts["index0_over_eps"] += v[0] > EPS
            counts["index1_3_over_eps"] += max(v[1:]) > EPS
            counts["sinks_total_over_eps"] += sum(v) > EPS
            if sum(v) > EPS:
                where[max(range(4), key=lambda k: v[k])] += 1
            tot.append(sum(v))
    C["S=%d (%s)" % (s, b)] = {
        "counts": counts, "largest_of_indices_0_3_for_heads_over_eps": where,
        "mean_mass_index_0_to_3": [mean(flat(per_k[k])) for k in range(4)],
        "mean_mass_indices_0_3": mean(tot),
    }

with open(os.path.join(OUT, "summary.json"), "w") as f:
    json.dump(rnd(summary), f, indent=1)
    f.write("\n")
with open(os.path.join(OUT, "tables.md"), "w") as f:
    f.write("\n".join(tables))
print("\n".join(tables))
