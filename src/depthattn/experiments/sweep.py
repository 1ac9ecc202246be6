"""`depthattn compare --sweep FIELD=V1,V2,...`: the same comparison at several values of one
model or training field (e.g. ``num_layers=4,8,16`` or ``lr=1e-3,3e-3``), each in its own
folder ``OUT/FIELD=V``, then the loss difference of every method to the baseline against the
swept value: sweep.json, sweep.md and sweep_FIELD.png (mean ± std of the paired differences,
95% bootstrap CI in the table)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from depthattn.analysis.plots import plot_sweep
from depthattn.experiments.compare import check_tasks, plan_comparison, run_compare
from depthattn.experiments.tables import diff_cells
from depthattn.model.config import ModelConfig
from depthattn.train.config import TrainConfig, field_names
from depthattn.utils.atomic import write_json_atomic, write_text_atomic
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.parsing import parse_value

# training fields a sweep may not change: they name the run, not a setting of it
NOT_SWEPT = {"run_dir", "method", "method_options", "model_overrides", "seed", "progress"}


def parse_sweep(text: str, option: str = "--sweep") -> tuple[str, list[Any]]:
    """``"num_layers=4,8,16"`` → ``("num_layers", [4, 8, 16])``; errors name ``option``."""
    field, sep, raw = text.partition("=")
    field = field.strip().replace("-", "_")
    values = [parse_value(v.strip()) for v in raw.split(",") if v.strip()]
    if not sep or not field or not values:
        raise DepthAttnError(f"{option} {text!r} must look like field=value1,value2,...")
    if len(set(map(repr, values))) != len(values):
        raise DepthAttnError(f"{option} {text!r} repeats a value")
    if field in NOT_SWEPT:
        raise DepthAttnError(f"{option} field {field!r} names the runs, not a setting of them; "
                             f"compare methods with --methods and seeds with --seeds")
    allowed = _sweepable()
    if field not in allowed:
        raise DepthAttnError(f"{option} field {field!r} is neither a training nor a model field; "
                             f"allowed: {', '.join(sorted(allowed))}")
    return field, values


def _sweepable() -> set[str]:
    model = {f.name for f in dataclasses.fields(ModelConfig)} - {"method", "method_options"}
    return (set(field_names()) - NOT_SWEPT) | model


def with_value(base: TrainConfig, field: str, value: Any) -> TrainConfig:
    """``base`` with a training field, or a model field (through model_overrides), set."""
    if field in field_names():
        return dataclasses.replace(base, **{field: value})
    return dataclasses.replace(base, model_overrides={**base.model_overrides, field: value})


def run_sweep(base: TrainConfig, methods: list[str], seeds: list[int], out_dir: str | Path,
              sweep: str, baseline: str | None = None, tasks: str | None = None,
              task_limit: int | None = None) -> dict[str, Any]:
    out_dir = Path(out_dir)
    field, values = parse_sweep(sweep)
    check_tasks(tasks)
    configs = [with_value(base, field, v) for v in values]  # every value checked before work
    for config in configs:
        _, baseline = plan_comparison(config, methods, seeds, baseline)
    reports = [run_compare(config, methods, seeds, out_dir / f"{field}={value}", baseline,
                           tasks, task_limit) for config, value in zip(configs, values)]

    rows = [{"value": value, "method": row["method"], "val_loss": row["val_loss"],
             "diff_vs_baseline": row.get("diff_vs_baseline")}
            for value, report in zip(values, reports) for row in report["rows"]]
    figure = plot_sweep(field, values, rows, baseline, out_dir / f"sweep_{field}.png")
    summary = {"field": field, "values": values, "baseline": baseline, "methods": methods,
               "seeds": seeds, "rows": rows, "plot": str(figure),
               "train_config": base.to_dict()}
    write_json_atomic(out_dir / "sweep.json", summary)
    markdown = render_sweep(summary)
    write_text_atomic(out_dir / "sweep.md", markdown)
    print(markdown)
    return summary


def render_sweep(summary: dict[str, Any]) -> str:
    field, baseline = summary["field"], summary["baseline"]
    lines = [f"# Sweep over {field}: {', '.join(map(str, summary['values']))}", "",
             f"Seeds {', '.join(map(str, summary['seeds']))}; Δ = method − {baseline}, paired by "
             f"seed (negative = lower validation loss); 95% CI from a percentile bootstrap, p "
             f"from a paired t-test. Each value's full comparison is in `{field}=VALUE/`.", "",
             f"| {field} | method | val loss (mean ± std) | Δ vs {baseline} | 95% CI | p |",
             "|---|---|---|---|---|---:|"]
    for row in summary["rows"]:
        loss = row["val_loss"]
        delta, ci, p = diff_cells(row["diff_vs_baseline"], 4)
        lines.append(f"| {row['value']} | {row['method']} | {loss['mean']:.4f} ± "
                     f"{loss['std']:.4f} | {delta} | {ci} | {p} |")
    lines += ["", f"Plot: {Path(summary['plot']).name}", ""]
    return "\n".join(lines)
