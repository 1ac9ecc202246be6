"""`depthattn compare --tune FIELD=V1,V2,V3 --tune-seeds S...`: a comparison under two
protocols, both reported.

1. *Shared*: every method at the configuration's value of FIELD (one recipe for all), on the
   reported seeds: the plain comparison, in ``OUT/shared``.
2. *Tuned*: each method's value of FIELD is chosen on tuning seeds that are never reported
   (lowest mean validation loss over them); where the best value sits on the grid's edge the
   grid is extended that way (by the edge's own step), at most twice, so the optimum is
   interior or the edge is reported. The reported seeds are then trained at each method's
   chosen value, in ``OUT/tuned``; runs at the shared value are those of protocol 1, reused.

Selecting on the seeds one reports would credit noise to the method that got lucky, which is
why the two sets of seeds must be disjoint.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from depthattn.experiments.compare import (
    MethodRun,
    check_tasks,
    collect_run,
    plan_comparison,
    prepared,
    run_config,
    write_report,
)
from depthattn.experiments.sweep import parse_sweep, with_value
from depthattn.train.config import TrainConfig, field_names
from depthattn.utils.atomic import write_json_atomic, write_text_atomic
from depthattn.utils.errors import DepthAttnError

MAX_EXTENSIONS = 2  # grid extensions per method, beyond the given values


def parse_tune(text: str, seeds: list[int], tune_seeds: list[int] | None) -> tuple[str, list]:
    """``"lr=1e-3,3e-3,6e-3"`` → ``("lr", [0.001, 0.003, 0.006])``, checked: numbers, at least
    three (an optimum needs neighbours on both sides), tuning seeds disjoint from ``seeds``."""
    field, values = parse_sweep(text, option="--tune")
    if len(values) < 3:
        raise DepthAttnError(f"--tune {text!r} needs at least three values, so that the best one "
                             f"can have a neighbour on each side")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
               for v in values):
        raise DepthAttnError(f"--tune {text!r}: values must be positive numbers (the grid is "
                             f"extended geometrically past its edges)")
    if not tune_seeds:
        raise DepthAttnError("--tune needs --tune-seeds: seeds to choose on, never reported")
    if len(set(tune_seeds)) != len(tune_seeds) or min(tune_seeds) < 0:
        raise DepthAttnError(f"--tune-seeds ({tune_seeds}) must be distinct integers >= 0")
    shared = sorted(set(seeds) & set(tune_seeds))
    if shared:
        raise DepthAttnError(f"--tune-seeds and --seeds share {shared}: a value chosen on the "
                             f"seeds it is then reported on favours the luckiest method; use "
                             f"disjoint seeds")
    return field, sorted(values)


def value_of(base: TrainConfig, field: str) -> Any:
    """FIELD's value in ``base``: a training field, or a model field of its model config."""
    if field in field_names():
        return getattr(base, field)
    return getattr(base.model_config(), field)


def extended(grid: list, side: str) -> list:
    """The grid with one more value past ``side`` ("low" or "high"), a step as wide as the
    edge's own (geometric); integers stay integers."""
    if side == "low":
        new = grid[0] * grid[0] / grid[1]
    else:
        new = grid[-1] * grid[-1] / grid[-2]
    if all(isinstance(v, int) for v in grid):
        new = max(1, round(new))
        if new in grid:
            return grid
    return sorted([*grid, new])


def tune_method(base: TrainConfig, run: MethodRun, field: str, values: list,
                tune_seeds: list[int], out_dir: Path) -> dict[str, Any]:
    """Train (or collect) ``run`` at each value over the tuning seeds, extending the grid past
    an edge optimum; the mean validation loss per value and the chosen value."""
    grid, losses, extensions = list(values), {}, 0
    while True:
        for value in grid:
            if value in losses:
                continue
            cfg = with_value(base, field, value)
            losses[value] = statistics.fmean(
                collect_run(run_config(cfg, run, seed, out_dir / f"{field}={value}"),
                            run.label)["val_loss"] for seed in tune_seeds)
        best = min(grid, key=losses.__getitem__)
        side = "low" if best == grid[0] else "high" if best == grid[-1] else None
        if side is None or extensions == MAX_EXTENSIONS:
            break
        wider = extended(grid, side)
        if wider == grid:
            break
        grid, extensions = wider, extensions + 1
    return {"method": run.label, "field": field, "grid": grid,
            "mean_val_loss": {repr(v): losses[v] for v in grid}, "chosen": best,
            "on_edge": side is not None, "extensions": extensions, "tune_seeds": tune_seeds}


def run_tuned_compare(base: TrainConfig, methods: list[str], seeds: list[int],
                      out_dir: str | Path, tune: str, tune_seeds: list[int],
                      baseline: str | None = None, tasks: str | None = None,
                      task_limit: int | None = None) -> dict[str, Any]:
    """Both protocols (module docstring): OUT/shared, OUT/tune, OUT/tuned, and OUT/tuning.md
    and .json (each method's grid, mean tuning loss per value and chosen value)."""
    out_dir = Path(out_dir)
    field, values = parse_tune(tune, seeds, tune_seeds)
    check_tasks(tasks)
    runs, baseline = plan_comparison(base, methods, seeds, baseline)
    for value in values:  # every value's model and training config checked before work
        plan_comparison(with_value(base, field, value), methods, seeds, baseline)
    base = prepared(base)
    shared_value = value_of(base, field)

    shared = {r.label: [collect_run(run_config(base, r, s, out_dir / "shared"), r.label, tasks,
                                    task_limit) for s in seeds] for r in runs}
    shared_report = write_report(shared, baseline, base, out_dir / "shared")

    tuning = [tune_method(base, r, field, values, tune_seeds, out_dir / "tune") for r in runs]
    tuned: dict[str, list[dict[str, Any]]] = {}
    for r, choice in zip(runs, tuning):
        value = choice["chosen"]
        folder = out_dir / "shared" if value == shared_value else \
            out_dir / "tuned" / f"{field}={value}"
        cfg = with_value(base, field, value)
        tuned[r.label] = [collect_run(run_config(cfg, r, s, folder), r.label, tasks,
                                      task_limit) for s in seeds]
    tuned_report = write_report(tuned, baseline, base, out_dir / "tuned")
    summary = {"field": field, "grid": values, "shared_value": shared_value, "seeds": seeds,
               "tune_seeds": tune_seeds, "methods": tuning}
    write_json_atomic(out_dir / "tuning.json", summary)
    write_text_atomic(out_dir / "tuning.md", render_tuning(summary))
    return {"shared": shared_report, "tuned": tuned_report, "tuning": summary}


def render_tuning(summary: dict[str, Any]) -> str:
    field = summary["field"]
    lines = [f"# Tuning {field}", "",
             f"Mean validation loss over tuning seeds {summary['tune_seeds']} (never reported); "
             f"the shared recipe's {field} is {summary['shared_value']}. A chosen value on the "
             f"grid's edge after {MAX_EXTENSIONS} extensions is marked.", "",
             f"| method | chosen {field} | grid: mean val loss |", "|---|---:|---|"]
    for m in summary["methods"]:
        cells = ", ".join(f"{v}: {m['mean_val_loss'][repr(v)]:.4f}" for v in m["grid"])
        edge = " (edge)" if m["on_edge"] else ""
        lines.append(f"| {m['method']} | {m['chosen']}{edge} | {cells} |")
    return "\n".join(lines) + "\n"
