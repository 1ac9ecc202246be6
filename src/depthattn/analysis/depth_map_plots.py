"""Figures of depth maps (matplotlib PNG): the layers x sources heatmap of one model, and small
multiples of it with the per-layer entropy over a run's checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from depthattn.analysis.depth_maps import DepthMap
from depthattn.analysis.plots import pyplot, write


def _heatmap(ax, depth: DepthMap, title: str, annotate: bool):
    matrix = depth.mean_weight.mean(0).numpy()  # (L, L + 1)
    L = depth.num_layers
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=0.0, vmax=1.0, cmap="viridis",
                      aspect="auto")
    ax.set_xticks(range(L + 1))
    ax.set_xticklabels([str(j) for j in range(L)] + ["self"], fontsize=7)
    ax.set_yticks(range(L))
    ax.set_yticklabels([str(l) for l in range(L)], fontsize=7)
    ax.set_xlabel("source layer")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    if annotate and L <= 16:
        for l in range(L):
            for j in range(L + 1):
                if not np.isnan(matrix[l, j]):
                    ax.text(j, l, f"{matrix[l, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if matrix[l, j] < 0.6 else "black")
    return image


def plot_depth_map(depth: DepthMap, path: Path, title: str = "mean depth weight") -> Path:
    """Heatmap of E[α] (mean over kv heads), layer l's row: its sources, then itself."""
    plt = pyplot()
    L = depth.num_layers
    fig, (ax, ax_entropy) = plt.subplots(1, 2, figsize=(6 + 0.35 * L, 4 + 0.2 * L), dpi=120,
                                         gridspec_kw={"width_ratios": [3, 1]})
    image = _heatmap(ax, depth, f"{title} ({depth.tokens:,} tokens)", annotate=True)
    fig.colorbar(image, ax=ax, fraction=0.046)
    layers = list(depth.sources)
    ax_entropy.barh(layers, [float(depth.entropy.mean(0)[l]) for l in layers], color="C0",
                    label="entropy")
    ax_entropy.scatter([depth.max_entropy(l) for l in layers], layers, color="black", marker="|",
                       s=80, label="uniform")
    ax_entropy.set_ylim(L - 0.5, -0.5)
    ax_entropy.set_xlabel("nats")
    ax_entropy.set_title("depth-softmax entropy", fontsize=9)
    ax_entropy.legend(fontsize=7)
    return write(fig, path)


def plot_depth_map_evolution(steps: Sequence[int], maps: Sequence[DepthMap], path: Path) -> Path:
    """One heatmap per checkpoint (small multiples), and every layer's entropy against step."""
    plt = pyplot()
    n = len(maps)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.2 * (n + 1), 3.6), dpi=120, squeeze=False)
    for ax, step, depth in zip(axes[0], steps, maps):
        image = _heatmap(ax, depth, f"step {step}", annotate=False)
    fig.colorbar(image, ax=axes[0][n - 1], fraction=0.046)
    ax = axes[0][n]
    for layer in maps[-1].sources:
        ax.plot(steps, [float(m.entropy.mean(0)[layer]) for m in maps], marker="o",
                label=f"L{layer}")
    ax.set_xlabel("step")
    ax.set_ylabel("entropy (nats)")
    ax.set_title("depth-softmax entropy", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return write(fig, path)
