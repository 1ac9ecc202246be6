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
from depthattn.data.prepare_text import resolve_data
from depthattn.experiments.tables import Results, method_rows, pairwise, render_markdown
from depthattn.methods.registry import get_method
from depthattn.train import train
from depthattn.train.config import TrainConfig
from depthattn.train.metrics import read_metrics
from depthattn.train.resume import changed_fields
from depthattn.train.run_dir import RunDir
from depthattn.utils.atomic import write_json_atomic, write_text_atomic
from depthattn.utils.errors import DepthAttnError
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


def run_config(base: TrainConfig, run: MethodRun, seed: int, out_dir: Path) -> TrainConfig:
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


def check_tasks(tasks: str | None) -> None:
    """A missing lm-eval or unknown task names fail before any training."""
    if not tasks:
        return
    from depthattn.eval.tasks import resolve_tasks
    from depthattn.eval.zeroshot import require_lm_eval

    require_lm_eval()
    resolve_tasks(tasks)


def plan_comparison(base: TrainConfig, methods: list[str], seeds: list[int],
                    baseline: str | None = None) -> tuple[list[MethodRun], str]:
    """The parsed methods and the baseline, after every check that needs no training: method
    names and options, each run's model config, distinct seeds."""
    runs = [parse_method(m) for m in methods]
    if len({r.label for r in runs}) != len(runs):
        raise DepthAttnError(f"methods ({', '.join(methods)}) must be distinct")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise DepthAttnError(f"seeds ({seeds}) must be distinct integers >= 0, at least one")
    labels = [r.label for r in runs]
    baseline = baseline or ("vanilla" if "vanilla" in labels else labels[0])
    if baseline not in labels:
        raise DepthAttnError(f"baseline ({baseline!r}) must be one of the methods: {', '.join(labels)}")
    for run in runs:  # every run's model (ModelConfig resolves its options) before any work
        run_config(base, run, seeds[0], Path(".")).model_config()
    return runs, baseline


def run_compare(base: TrainConfig, methods: list[str], seeds: list[int], out_dir: str | Path,
                baseline: str | None = None, tasks: str | None = None,
                task_limit: int | None = None) -> dict[str, Any]:
    """Train (or collect) every method x seed, then report. ``tasks`` adds zero-shot accuracy
    columns (lm-eval task names, e.g. "corpus_cloze,corpus_continuation" or "paper")."""
    out_dir = Path(out_dir)
    check_tasks(tasks)
    runs, baseline = plan_comparison(base, methods, seeds, baseline)
    base = prepared(base)  # once, not per run
    configs = {(r.label, s): run_config(base, r, s, out_dir) for r in runs for s in seeds}

    results: dict[str, list[dict[str, Any]]] = {r.label: [] for r in runs}
    for (label, seed), cfg in configs.items():
        results[label].append(collect_run(cfg, label, tasks, task_limit))
    return write_report(results, baseline, base, out_dir)


def prepared(base: TrainConfig) -> TrainConfig:
    """``base`` with its data prepared once (the prepared folder, not the corpus name)."""
    manifest = resolve_data(base.data, base.vocab_size, progress=base.progress)
    return dataclasses.replace(base, data=str(manifest.parent))


def collect_run(cfg: TrainConfig, label: str, tasks: str | None = None,
                task_limit: int | None = None) -> dict[str, Any]:
    """Train ``cfg`` (resuming an interrupted run), or collect it when it finished earlier
    with the same settings; its summary, validation curve and zero-shot accuracies."""
    run = RunDir(cfg.run_dir)
    run_dir = run.path
    if not run.is_finished():
        resume = run.is_run()
        log.info("%s %s seed %d: %s", "resuming" if resume else "training", label, cfg.seed,
                 run_dir)
        train(cfg, resume=resume)
    else:
        log.info("%s seed %d: finished earlier, collected from %s", label, cfg.seed, run_dir)
        changed = changed_fields(run, cfg)
        if changed:
            raise DepthAttnError(f"{run_dir} was trained with another configuration (differs in "
                                 f"{', '.join(changed)}); remove it or choose another output "
                                 f"folder")
    summary = json.loads(run.summary_file.read_text())
    curve = [(m["step"] * cfg.tokens_per_step, m["val_loss"])
             for m in read_metrics(run_dir) if "val_loss" in m]
    zeroshot = _zeroshot(run_dir, tasks, task_limit) if tasks else {}
    return {**summary, "seed": cfg.seed, "curve": curve, "run_dir": str(run_dir),
            "zeroshot": zeroshot}


def write_report(results: Results, baseline: str, base: TrainConfig,
                 out_dir: Path) -> dict[str, Any]:
    """compare.json, compare.md and the two plots of one comparison."""
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = plot_val_curves({label: [r["curve"] for r in runs] for label, runs in results.items()},
                             out_dir / "val_loss_curves.png")
    bars = plot_final_bars({label: [r["val_loss"] for r in runs] for label, runs in results.items()},
                           out_dir / "final_val_loss.png")
    report = {"baseline": baseline, "train_config": base.to_dict(),
              "rows": method_rows(results, baseline), "pairs": pairwise(results),
              "plots": [str(curves), str(bars)]}
    write_json_atomic(out_dir / "compare.json", report)
    markdown = render_markdown(report)
    write_text_atomic(out_dir / "compare.md", markdown)
    print(markdown)
    return report
