"""Sinks vs window at four cache sizes: table (c) of docs/results.md, from Python.

    pip install .                      # the spillway package (docs/python.md)
    pip install matplotlib             # optional: the plot
    python examples/python/sinks_vs_window.py [--tokens 3072] [--caches 256,512,1024,2048]
                                              [--plot sinks_vs_window.png]

Streams the first 3,072 tokens of Jane Austen through SmolLM2-135M under sink:4+(C-4) and
window:C for each cache size C, and prints the perplexity of targets 2,048..3,071 (past
every cache) as in docs/results.md (c). About 10 minutes on 2 cores; --tokens 1024
--caches 64,128 runs in one.
"""

import argparse

import numpy as np

import spillway

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--corpus", default="data/austen.txt")
ap.add_argument("--tokens", type=int, default=3072)
ap.add_argument("--caches", default="256,512,1024,2048")
ap.add_argument("--plot", default="sinks_vs_window.png")
args = ap.parse_args()
caches = [int(c) for c in args.caches.split(",")]

# --- the experiment: a dozen lines of the API -------------------------------------------
model = spillway.Model.load(args.model)
with open(args.corpus, encoding="utf-8") as f:
    ids = model.tokenize(f.read(args.tokens * 8))[: args.tokens]  # ~4 chars per token
policies = [p for c in caches for p in (f"sink:4+{c - 4}", f"window:{c}")]
results = {r.spec: r for r in spillway.perplexity(model, ids, policies)}
first = max(caches)  # score targets past every cache: stream index >= first
ppl = {spec: float(np.exp(r.nll[first - r.first_target :].mean(dtype=np.float64))) for spec, r in results.items()}

print(f"targets {first:,}..{len(ids) - 1:,} of {len(ids):,} tokens\n")
print("| cache | sink:4+(cache-4) | window:cache | window / sink |\n|---|---|---|---|")
for c in caches:
    s, w = ppl[f"sink:4+{c - 4}"], ppl[f"window:{c}"]
    print(f"| {c} | {s:.2f} | {w:.2f} | {w / s:.2f} |")

# --- the plot (optional) ----------------------------------------------------------------
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("\nno plot: matplotlib is not installed (pip install matplotlib, or apt-get install python3-matplotlib)")
else:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(caches, [ppl[f"sink:4+{c - 4}"] for c in caches], "o-", label="sink:4+(cache-4)")
    ax.plot(caches, [ppl[f"window:{c}"] for c in caches], "s-", label="window:cache")
    ax.set_xscale("log", base=2)
    ax.set_xticks(caches, [str(c) for c in caches])
    ax.set_xlabel("cache size (tokens)")
    ax.set_ylabel(f"perplexity, targets {first:,}..{len(ids) - 1:,}")
    ax.set_title(f"{model.config['name'] or model.architecture}: sinks vs window")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"\nplot: {args.plot}")
