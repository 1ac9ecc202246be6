"""Comparison plots (matplotlib, PNG): validation-loss curves with seed bands, and final loss
per method with error bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_val_curves(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], path: Path,
                    title: str = "validation loss") -> Path:
    """curves[method] = one [(tokens, val_loss), ...] list per seed; mean line ± std band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, runs in curves.items():
        points = sorted({x for run in runs for x, _ in run})
        aligned = np.array([[dict(run).get(x, np.nan) for x in points] for run in runs])
        mean = np.nanmean(aligned, axis=0)
        line, = ax.plot(points, mean, label=f"{method} (n={len(runs)})", linewidth=1.8)
        if len(runs) > 1:
            std = np.nanstd(aligned, axis=0, ddof=1)
            ax.fill_between(points, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_final_bars(finals: Mapping[str, Sequence[float]], path: Path,
                    title: str = "final validation loss (mean ± std over seeds)") -> Path:
    plt = _pyplot()
    methods = list(finals)
    means = [float(np.mean(finals[m])) for m in methods]
    stds = [float(np.std(finals[m], ddof=1)) if len(finals[m]) > 1 else 0.0 for m in methods]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(methods)), 4.5), dpi=120)
    ax.bar(methods, means, yerr=stds, capsize=6, color=[f"C{i}" for i in range(len(methods))])
    for i, m in enumerate(methods):  # the individual seeds on top of the bars
        ax.scatter([i] * len(finals[m]), finals[m], color="black", s=12, zorder=3)
    low = min(min(v) for v in finals.values())
    high = max(max(v) for v in finals.values())
    pad = max(0.02, (high - low) * 0.6)
    ax.set_ylim(low - pad, high + pad)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
