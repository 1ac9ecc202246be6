"""`depthattn compare`: several methods × several seeds on the same data, budget and schedule,
then mean ± std, paired differences to the baseline with significance, a Markdown/JSON report
and plots. Finished runs are collected, interrupted ones resumed, so a comparison can be
extended (more seeds, another method) without redoing work."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthattn.analysis.plots import plot_final_bars, plot_val_curves
from depthattn.analysis.stats import fmt, paired_difference, summarize
from depthattn.crosslayer.registry import get_method, resolve_options
from depthattn.data.resolve import resolve_data
from depthattn.run_dir import RunDir
from depthattn.train.config import TrainConfig
from depthattn.train.metrics import read_metrics
from depthattn.train.trainer import changed_fields, train
from depthattn.utils.atomic import write_json_atomic, write_text_atomic
from depthattn.utils.parsing import parse_key_values

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodRun:
    label: str  # as given on the command line, e.g. "depth_attention:stride=2"
    method: str
    options: dict[str, Any]


def parse_method(text: str) -> MethodRun:
    """``name`` or ``name:key=value,key=value`` (values parsed as JSON when possible)."""
    name, _, rest = text.partition(":")
    get_method(name)  # unknown names fail here, before any run starts
    options = parse_key_values(list(filter(None, rest.split(","))),
                               what=f"method option in {text!r}:")
    return MethodRun(text, name, options)


def _run_config(base: TrainConfig, run: MethodRun, seed: int, out_dir: Path) -> TrainConfig:
    safe = run.label.replace(":", "-").replace(",", "-").replace("=", "")
    return dataclasses.replace(base, method=run.method, method_options=run.options, seed=seed,
                               run_dir=str(out_dir / safe / f"seed{seed}"))


def _zeroshot(run_dir: Path, tasks: str, limit: int | None) -> dict[str, float]:
    """Accuracy per task of one finished run, computed once and cached in run_dir/zeroshot."""
    zeroshot_dir = RunDir(run_dir).zeroshot_dir
    cached = zeroshot_dir / "zeroshot.json"
    if cached.exists():
        report = json.loads(cached.read_text())
        if report["settings"].get("tasks") == tasks and report["settings"]["limit"] == limit:
            return {row["task"]: row["acc"] for row in report["tasks"] if "acc" in row}
    from depthattn.eval.zeroshot import evaluate_zeroshot

    rows = evaluate_zeroshot(run_dir, tasks, limit=limit, out_dir=zeroshot_dir)
    report = json.loads(cached.read_text())
    report["settings"]["tasks"] = tasks  # remembered, so a later compare reuses it
    write_json_atomic(cached, report)
    return {row["task"]: row["acc"] for row in rows if "acc" in row}


def run_compare(base: TrainConfig, methods: list[str], seeds: list[int], out_dir: str | Path,
                baseline: str | None = None, tasks: str | None = None,
                task_limit: int | None = None) -> dict[str, Any]:
    """Train (or collect) every method x seed, then report. ``tasks`` adds zero-shot accuracy
    columns (lm-eval task names, e.g. "corpus_cloze,corpus_continuation" or "paper")."""
    out_dir = Path(out_dir)
    if tasks:  # a missing lm-eval or unknown task names fail before any training
        from depthattn.eval.tasks import OUR_NAMES, resolve_task_names
        from depthattn.eval.zeroshot import require_lm_eval

        require_lm_eval()

        if all(t.strip() in OUR_NAMES for t in tasks.split(",")):
            resolve_task_names(tasks)
        else:
            from lm_eval.tasks import TaskManager

            resolve_task_names(tasks, TaskManager().all_tasks)
    runs = [parse_method(m) for m in methods]
    if len({r.label for r in runs}) != len(runs):
        raise ValueError(f"methods ({', '.join(methods)}) must be distinct")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds ({seeds}) must be distinct integers >= 0, at least one")
    labels = [r.label for r in runs]
    baseline = baseline or ("vanilla" if "vanilla" in labels else labels[0])
    if baseline not in labels:
        raise ValueError(f"baseline ({baseline!r}) must be one of the methods: {', '.join(labels)}")
    for run in runs:  # validate every run's model before any work
        model_cfg = _run_config(base, run, seeds[0], out_dir).model_config()
        resolve_options(model_cfg.method, model_cfg.method_options, model_cfg)
    # prepare once, not per run
    manifest = resolve_data(base.data, base.vocab_size, progress=base.progress)
    base = dataclasses.replace(base, data=str(manifest.parent))
    configs = {(r.label, s): _run_config(base, r, s, out_dir) for r in runs for s in seeds}

    results: dict[str, list[dict[str, Any]]] = {r.label: [] for r in runs}
    for (label, seed), cfg in configs.items():
        run = RunDir(cfg.run_dir)
        run_dir = run.path
        if not run.is_finished():
            resume = run.is_run()
            log.info("%s %s seed %d: %s", "resuming" if resume else "training", label, seed, run_dir)
            train(cfg, resume=resume)
        else:
            log.info("%s seed %d: finished earlier, collected from %s", label, seed, run_dir)
            changed = changed_fields(run, cfg)
            if changed:
                raise ValueError(f"{run_dir} was trained with another configuration (differs in "
                                 f"{', '.join(changed)}); remove it or choose another output "
                                 f"folder")
        summary = json.loads(run.summary_file.read_text())
        curve = [(m["step"] * cfg.tokens_per_step, m["val_loss"])
                 for m in read_metrics(run_dir) if "val_loss" in m]
        zeroshot = _zeroshot(run_dir, tasks, task_limit) if tasks else {}
        results[label].append({**summary, "seed": seed, "curve": curve, "run_dir": str(run_dir),
                               "zeroshot": zeroshot})
    return write_report(results, baseline, base, out_dir)


def write_report(results: dict[str, list[dict[str, Any]]], baseline: str, base: TrainConfig,
                 out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base_by_seed = {r["seed"]: r["val_loss"] for r in results[baseline]}
    rows = []
    for label, runs in results.items():
        losses = [r["val_loss"] for r in runs]
        row = {"method": label, "seeds": [r["seed"] for r in runs],
               "num_parameters": runs[0]["num_parameters"],
               "val_loss": dataclasses.asdict(summarize(losses)),
               "val_ppl": dataclasses.asdict(summarize([r["val_ppl"] for r in runs])),
               "tokens_per_s": dataclasses.asdict(summarize([r["tokens_per_s"] for r in runs])),
               "val_tokens": runs[0]["val_tokens"], "runs": runs}
        if label != baseline:
            paired = [(r["val_loss"], base_by_seed[r["seed"]]) for r in runs
                      if r["seed"] in base_by_seed]
            diff = paired_difference([a for a, _ in paired], [b for _, b in paired])
            row["diff_vs_baseline"] = dataclasses.asdict(diff)
        row["zeroshot"] = _zeroshot_stats(runs, results[baseline], label == baseline)
        rows.append(row)

    curves = plot_val_curves({label: [r["curve"] for r in runs] for label, runs in results.items()},
                             out_dir / "val_loss_curves.png")
    bars = plot_final_bars({label: [r["val_loss"] for r in runs] for label, runs in results.items()},
                           out_dir / "final_val_loss.png")
    report = {"baseline": baseline, "train_config": base.to_dict(), "rows": rows,
              "plots": [str(curves), str(bars)]}
    write_json_atomic(out_dir / "compare.json", report)
    markdown = render_markdown(report)
    write_text_atomic(out_dir / "compare.md", markdown)
    print(markdown)
    return report


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


def render_markdown(report: dict[str, Any]) -> str:
    cfg, baseline = report["train_config"], report["baseline"]
    lines = [
        f"# Comparison: {', '.join(r['method'] for r in report['rows'])}",
        "",
        f"Model preset `{cfg['model']}` {cfg['model_overrides'] or ''}, {cfg['steps']} steps of "
        f"{cfg['micro_batch_size']} x {cfg['seq_len']} tokens, lr {cfg['lr']}, data "
        f"`{cfg['data']}`. Validation over {report['rows'][0]['val_tokens']:,} held-out tokens. "
        f"Differences are paired by seed against `{baseline}` (negative = lower loss than "
        f"{baseline}); p from a two-sided paired t-test, CI from a percentile bootstrap.",
        "",
        "| method | params | seeds | val loss (mean ± std) | val ppl | Δ loss vs " + baseline +
        " | 95% CI | p | tokens/s |",
        "|---|---:|---:|---|---:|---|---|---:|---:|",
    ]
    for row in report["rows"]:
        loss, ppl, tps = row["val_loss"], row["val_ppl"], row["tokens_per_s"]
        diff = row.get("diff_vs_baseline")
        delta = ci = p = "–"
        if diff:
            delta = f"{diff['mean']:+.4f} ± {fmt(diff['std'])}"
            if diff["ci_low"] is not None:
                ci = f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}]"
            p = fmt(diff["p_value"], 3)
        lines.append(f"| {row['method']} | {row['num_parameters']:,} | {loss['n']} | "
                     f"{loss['mean']:.4f} ± {loss['std']:.4f} | {ppl['mean']:.2f} ± "
                     f"{ppl['std']:.2f} | {delta} | {ci} | {p} | {tps['mean']:,.0f} |")
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
