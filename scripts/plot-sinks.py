#!/usr/bin/env python3
"""Plot what `spillway sinks --json` measured.

Usage: plot-sinks.py JSON DIR

Writes into DIR:
  alpha1.png      layer x head heatmap of the sink score alpha_1 (Gu et al.): the mean
                  attention each head puts on the first token of the stream
  mass.png        per layer, the share of all attention mass that lands on each stream
                  index and on each cache position (log scale)
  hidden.png      the residual stream's L2 norm by stream index entering some layers
                  (log scale), and per layer the first token's norm over the median
                  token's: massive activations
  ablation.png    (with --ablate) the NLL change when each head loses its sink slots,
                  and that change against the head's attention mass on the sinks
"""

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plotting import import_pyplot, save_figure  # noqa: E402


def nan_table(rows):
    return [[math.nan if x is None else x for x in row] for row in rows]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, out = sys.argv[1], sys.argv[2]
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit("plot-sinks.py: cannot read '%s': %s" % (path, e))
    plt = import_pyplot(__file__)
    os.makedirs(out, exist_ok=True)
    name = os.path.basename(d["model"])
    title = "%s, %s, %d tokens" % (name, d["policy"], d["tokens"])
    L, H = d["n_layer"], d["n_head"]

    # alpha_1 heatmap.
    a = nan_table(d["alpha1"])
    fig, ax = plt.subplots(figsize=(max(4, H * 0.5 + 2), max(4, L * 0.22 + 1.5)))
    im = ax.imshow(a, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_title("sink score alpha_1 (rate %.1f%% > %.2f)\n%s"
                 % (d["sink_rate"]["stream"], d["eps"], title), fontsize=9)
    fig.colorbar(im, ax=ax, label="mean attention on stream index 0")
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "alpha1.png"), dpi=120)
    plt.close(fig)

    # Mass by stream index and by cache position.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("viridis")
    for which, ax, xlabel in ((d["mass_by_stream"], axes[0], "stream index of the key"),
                              (d["mass_by_rank"], axes[1], "cache position of the key (0 = oldest)")):
        for l, row in enumerate(which):
            xs = [i + 1 for i, v in enumerate(row) if v > 0]
            ys = [row[i - 1] for i in xs]
            if xs:
                ax.plot(xs, ys, color=cmap(l / max(1, L - 1)), lw=0.8, alpha=0.8)
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel + " + 1")
        ax.set_ylabel("share of attention mass (mean over heads)")
        ax.grid(alpha=0.3)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, L - 1))
    fig.colorbar(sm, ax=axes, label="layer")
    fig.suptitle("where the mass goes: " + title, fontsize=9)
    save_figure(fig, os.path.join(out, "mass.png"), dpi=120)
    plt.close(fig)

    # Hidden-state norms: by stream index for some layers, and token 0 against the median.
    hn = d["hidden_norm"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    step = max(1, (L + 1) // 6)
    for l in range(0, L + 1, step):
        row = hn[l]
        axes[0].plot(range(len(row)), row, color=cmap(l / max(1, L)), lw=0.8,
                     label="layer %d input" % l if l < L else "output")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("stream index")
    axes[0].set_ylabel("residual stream L2 norm")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    ratios = []
    for row in hn:
        srt = sorted(row)
        med = srt[len(srt) // 2] if srt else math.nan
        ratios.append(row[0] / med if med else math.nan)
    axes[1].bar(range(len(ratios)), ratios)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("layer input (0 = embeddings, %d = output)" % L)
    axes[1].set_ylabel("norm of token 0 / median token's")
    axes[1].grid(alpha=0.3)
    fig.suptitle("massive activations: " + title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "hidden.png"), dpi=120)
    plt.close(fig)

    ab = d.get("ablation")
    if ab and "head_delta" in ab:
        delta = nan_table(ab["head_delta"])
        mass = nan_table(ab["sink_mass"])
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        vmax = max(1e-6, max(abs(x) for row in delta for x in row if not math.isnan(x)))
        im = axes[0].imshow(delta, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                            origin="lower")
        axes[0].set_xlabel("query head")
        axes[0].set_ylabel("layer")
        axes[0].set_title("mean NLL change without the head's sinks")
        fig.colorbar(im, ax=axes[0])
        xs, ys = [], []
        for l in range(L):
            for h in range(H):
                if not math.isnan(delta[l][h]) and not math.isnan(mass[l][h]):
                    xs.append(mass[l][h])
                    ys.append(delta[l][h])
        axes[1].scatter(xs, ys, s=10, alpha=0.7)
        axes[1].set_xlabel("attention mass on the sink slots (scored queries)")
        axes[1].set_ylabel("mean NLL change")
        sp = ab.get("spearman", {}).get("delta_vs_mass")
        axes[1].set_title("Spearman %.2f" % sp if isinstance(sp, (int, float)) else "")
        axes[1].grid(alpha=0.3)
        fig.suptitle("sink ablation under %s, %d scored tokens: %s"
                     % (ab["policy"], ab["scored_tokens"], name), fontsize=9)
        save_figure(fig, os.path.join(out, "ablation.png"), dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    main()
