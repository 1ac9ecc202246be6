"""The statistics and tables of a comparison: per method mean ± std over seeds, paired
differences (to the baseline, and between every two methods) with a t-test, a bootstrap CI of
the mean and Cohen's d_z with its interval, zero-shot columns, and the Markdown rendering."""

from __future__ import annotations

import dataclasses
from itertools import combinations
from pathlib import Path
from typing import Any

from depthattn.analysis.stats import fmt, holm, paired_difference, summarize

Results = dict[str, list[dict[str, Any]]]  # method label -> one summary dict per seed


def paired(results: Results, method: str, other: str, key: str = "val_loss") -> dict[str, Any]:
    """``method − other`` over the seeds both have, as a dict of PairedDifference fields."""
    by_seed = {r["seed"]: r[key] for r in results[other]}
    pairs = [(r[key], by_seed[r["seed"]]) for r in results[method] if r["seed"] in by_seed]
    diff = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
    wins = sum(a < b for a, b in pairs)
    return {**dataclasses.asdict(diff), "method": method, "vs": other, "lower_on": wins}


def method_rows(results: Results, baseline: str) -> list[dict[str, Any]]:
    rows = []
    for label, runs in results.items():
        row = {"method": label, "seeds": [r["seed"] for r in runs],
               "num_parameters": runs[0]["num_parameters"],
               "val_loss": dataclasses.asdict(summarize([r["val_loss"] for r in runs])),
               "val_ppl": dataclasses.asdict(summarize([r["val_ppl"] for r in runs])),
               "tokens_per_s": dataclasses.asdict(summarize([r["tokens_per_s"] for r in runs])),
               "val_tokens": runs[0]["val_tokens"], "runs": runs}
        if label != baseline:
            row["diff_vs_baseline"] = paired(results, label, baseline)
        row["zeroshot"] = _zeroshot_stats(runs, results[baseline], label == baseline)
        rows.append(row)
    # Holm over the family of every method against the baseline: with several comparisons an
    # unadjusted p < 0.05 is not evidence
    diffs = [row["diff_vs_baseline"] for row in rows if "diff_vs_baseline" in row]
    for diff, adjusted in zip(diffs, holm([d["p_value"] for d in diffs])):
        diff["p_holm"] = adjusted
    return rows


def pairwise(results: Results) -> list[dict[str, Any]]:
    """Every later method against every earlier one, in the order the methods were given."""
    return [paired(results, later, earlier) for earlier, later in combinations(results, 2)]


def _zeroshot_stats(runs: list[dict[str, Any]], baseline_runs: list[dict[str, Any]],
                    is_baseline: bool) -> dict[str, Any]:
    """Per task: accuracy mean ± std over seeds and, for non-baselines, the paired difference."""
    base = {r["seed"]: r.get("zeroshot", {}) for r in baseline_runs}
    stats: dict[str, Any] = {}
    for task in sorted({t for r in runs for t in r.get("zeroshot", {})}):
        accs = [r["zeroshot"][task] for r in runs if task in r.get("zeroshot", {})]
        entry: dict[str, Any] = {"acc": dataclasses.asdict(summarize(accs))}
        pairs = [(r["zeroshot"][task], base[r["seed"]][task]) for r in runs
                 if task in r.get("zeroshot", {}) and task in base.get(r["seed"], {})]
        if not is_baseline and pairs:
            entry["diff_vs_baseline"] = dataclasses.asdict(
                paired_difference([a for a, _ in pairs], [b for _, b in pairs]))
        stats[task] = entry
    return stats


def _interval(low: float | None, high: float | None, digits: int = 4) -> str:
    return "–" if low is None else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def diff_cells(diff: dict[str, Any] | None, p_digits: int) -> tuple[str, str, str]:
    """The Δ (mean ± std), 95% CI and p cells of a paired difference; "–" without one."""
    if not diff:
        return "–", "–", "–"
    return (f"{diff['mean']:+.4f} ± {fmt(diff['std'])}", _interval(diff["ci_low"], diff["ci_high"]),
            fmt(diff["p_value"], p_digits))


def pairwise_markdown(pairs: list[dict[str, Any]]) -> list[str]:
    lines = ["| method | vs | Δ val loss (mean ± std) | 95% CI (bootstrap) | p (paired t) | "
             "d_z [95% CI] | lower on |",
             "|---|---|---|---|---:|---|---:|"]
    for d in pairs:
        effect = "–" if d["effect_size"] is None else (
            f"{d['effect_size']:+.2f} {_interval(d['effect_ci_low'], d['effect_ci_high'], 2)}")
        lines.append(f"| {d['method']} | {d['vs']} | {d['mean']:+.4f} ± {fmt(d['std'])} | "
                     f"{_interval(d['ci_low'], d['ci_high'])} | {fmt(d['p_value'], 4)} | "
                     f"{effect} | {d['lower_on']}/{d['n']} |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    cfg, baseline = report["train_config"], report["baseline"]
    lines = [
        f"# Comparison: {', '.join(r['method'] for r in report['rows'])}",
        "",
        f"Model preset `{cfg['model']}` {cfg['model_overrides'] or ''}, {cfg['steps']} steps of "
        f"{cfg['micro_batch_size']} x {cfg['seq_len']} tokens, lr {cfg['lr']}, data "
        f"`{cfg['data']}`. Validation over {report['rows'][0]['val_tokens']:,} held-out tokens. "
        f"Differences are paired by seed against `{baseline}` (negative = lower loss than "
        f"{baseline}); p from a two-sided paired t-test, Holm-adjusted over the "
        f"{len(report['rows']) - 1} comparisons against {baseline}; CI from a percentile "
        f"bootstrap.",
        "",
        "| method | params | seeds | val loss (mean ± std) | val ppl | Δ loss vs " + baseline +
        " | 95% CI | p | p (Holm) | tokens/s |",
        "|---|---:|---:|---|---:|---|---|---:|---:|---:|",
    ]
    for row in report["rows"]:
        loss, ppl, tps = row["val_loss"], row["val_ppl"], row["tokens_per_s"]
        delta, ci, p = diff_cells(row.get("diff_vs_baseline"), 3)
        p_holm = fmt(row.get("diff_vs_baseline", {}).get("p_holm"), 3)
        lines.append(f"| {row['method']} | {row['num_parameters']:,} | {loss['n']} | "
                     f"{loss['mean']:.4f} ± {loss['std']:.4f} | {ppl['mean']:.2f} ± "
                     f"{ppl['std']:.2f} | {delta} | {ci} | {p} | {p_holm} | "
                     f"{tps['mean']:,.0f} |")
    if len(report.get("pairs", [])) > 1:
        lines += ["", "Every pair of methods (Δ = method − vs, paired by seed; d_z = mean / std of "
                      "the differences, interval from the noncentral t):", ""]
        lines += pairwise_markdown(report["pairs"])
    tasks = sorted({t for row in report["rows"] for t in row.get("zeroshot", {})})
    if tasks:
        lines += ["", f"Zero-shot accuracy (mean ± std over seeds; Δ paired by seed against "
                      f"`{baseline}`, p from a paired t-test):", "",
                  "| method | " + " | ".join(tasks) + " |",
                  "|---|" + "---|" * len(tasks)]
        for row in report["rows"]:
            cells = []
            for task in tasks:
                entry = row["zeroshot"].get(task)
                if entry is None:
                    cells.append("–")
                    continue
                acc = entry["acc"]
                cell = f"{acc['mean']:.4f} ± {acc['std']:.4f}"
                diff = entry.get("diff_vs_baseline")
                if diff:
                    cell += f" (Δ {diff['mean']:+.4f}, p {fmt(diff['p_value'], 3)})"
                cells.append(cell)
            lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (validation loss):", ""]
    for row in report["rows"]:
        per_seed = ", ".join(f"seed {r['seed']}: {r['val_loss']:.4f}" for r in row["runs"])
        lines.append(f"- {row['method']}: {per_seed}")
    lines += ["", "Plots: " + ", ".join(Path(p).name for p in report["plots"]), ""]
    return "\n".join(lines)
