"""Comparison plots (matplotlib, PNG): validation-loss curves with seed bands, and final loss
per method with error bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def save(fig, ax, path: Path, title: str) -> Path:
    """Title, grid and legend, then the PNG; the figure is closed."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return write(fig, path)


def write(fig, path: Path) -> Path:
    """Tight layout, then the PNG; the figure is closed."""
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path


def plot_val_curves(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], path: Path,
                    title: str = "validation loss") -> Path:
    """curves[method] = one [(tokens, val_loss), ...] list per seed; mean line ± std band."""
    plt = pyplot()
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
    return save(fig, ax, path, title)


def plot_final_bars(finals: Mapping[str, Sequence[float]], path: Path,
                    title: str = "final validation loss (mean ± std over seeds)") -> Path:
    plt = pyplot()
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
    if max(map(len, methods)) > 12:  # long labels (method options) would overlap
        ax.set_xticks(range(len(methods)), [m.replace(":", ":\n") for m in methods],
                      rotation=20, ha="right")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return write(fig, path)


def plot_sweep(field: str, values: Sequence, rows: Sequence[Mapping], baseline: str,
               path: Path) -> Path:
    """Δ validation loss vs the baseline (mean ± std of the paired differences over seeds)
    against the swept value, one line per method; the baseline is the zero line."""
    plt = pyplot()
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = list(values) if numeric else list(range(len(values)))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.axhline(0.0, color="black", linewidth=1, label=f"{baseline} (reference)")
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != baseline]
    for i, method in enumerate(methods):
        points = [(x, r["diff_vs_baseline"]) for x, v in zip(xs, values) for r in rows
                  if r["method"] == method and r["value"] == v and r["diff_vs_baseline"]]
        if not points:
            continue
        ax.errorbar([x for x, _ in points], [d["mean"] for _, d in points],
                    yerr=[d["std"] for _, d in points], capsize=5, marker="o",
                    label=method, color=f"C{i}")
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(v) for v in values])
    ax.set_xlabel(field)
    ax.set_ylabel(f"Δ validation loss vs {baseline} (nats/token)")
    return save(fig, ax, path,
                f"loss difference to {baseline} against {field} (mean ± std over seeds)")
