"""`depthattn compare` (methods x seeds, with statistics and plots) and `depthattn quickstart`
(the README's main job: compare with the shipped quickstart config)."""

from __future__ import annotations

import argparse
from pathlib import Path

from depthattn.utils.errors import DepthAttnError

HELP = "methods x seeds, with statistics and plots"
DEFAULT_METHODS = ["vanilla", "depth_attention"]
# the main job: vanilla, the parameter-free control (every layer mixes in layer 0's value) and
# Depth-Attention
QUICKSTART_METHODS = ["vanilla", "value_residual", "depth_attention"]
QUICKSTART_TASK_LIMIT = 500  # documents per zero-shot task when the quickstart is given --tasks
QUICKSTART_HELP = ("the README's main job: a small Depth-Attention vs vanilla comparison on the "
                   "offline corpus")


def add_compare_arguments(parser: argparse.ArgumentParser, quickstart: bool = False) -> None:
    if not quickstart:
        parser.add_argument("--config", help="training config file (.toml/.yaml/.json)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods to compare, e.g. vanilla depth_attention:stride=2 "
                             "(default: vanilla depth_attention)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="reported seeds (default: " + ("0 1 2 3 4)" if quickstart
                                                            else "0 1)"))
    parser.add_argument("--out", default=None, help="default: runs/quickstart" if quickstart
                        else "default: runs/compare, or runs/CONFIG for a config with a "
                             "[compare] table")
    parser.add_argument("--baseline", default=None, help="default: vanilla if compared")
    # The quickstart's models are at chance on zero-shot tasks and scoring 15 runs would take
    # minutes of its 15-minute budget: zero-shot columns are asked for with --tasks.
    parser.add_argument("--tasks", default=None,
                        help="also report zero-shot accuracy on these lm-eval tasks, e.g. "
                             "corpus_cloze,corpus_continuation or paper ('' for none)")
    parser.add_argument("--task-limit", type=int, default=None,
                        help="documents per zero-shot task, with --tasks (default: "
                             + ("500)" if quickstart else "all)"))
    parser.add_argument("--sweep", default=None, metavar="FIELD=V1,V2,...",
                        help="repeat the comparison at each value of one model or training "
                             "field, e.g. num_layers=4,8,16 or lr=1e-3,3e-3; plots the loss "
                             "difference to the baseline against the value")
    if not quickstart:
        parser.add_argument("--tune", default=None, metavar="FIELD=V1,V2,V3",
                            help="also report a tuned protocol: each method's FIELD chosen on "
                                 "--tune-seeds (never reported), e.g. lr=1.5e-3,3e-3,6e-3")
        parser.add_argument("--tune-seeds", nargs="+", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="training fields, e.g. steps=400 lr=2e-3")
    parser.set_defaults(quickstart=quickstart)
    if quickstart:
        parser.set_defaults(config=None)


def add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    add_compare_arguments(parser, quickstart=True)


def run_compare(args: argparse.Namespace) -> None:
    from depthattn.experiments.compare import run_compare as compare
    from depthattn.experiments.sweep import run_sweep
    from depthattn.experiments.tune import run_tuned_compare
    from depthattn.train import load_train_config
    from depthattn.train.config import read_compare_settings

    config_path = args.config or ("quickstart" if args.quickstart else None)
    # the config's [compare] table, then the command line
    settings = read_compare_settings(config_path) if config_path else {}
    has_compare_table = bool(settings) and not args.quickstart
    for name in ("methods", "seeds", "out", "baseline", "tasks", "task_limit", "sweep", "tune",
                 "tune_seeds"):
        given = getattr(args, name, None)
        if given is not None:
            settings[name] = given
    table = settings.pop("table", None)
    tasks, task_limit = settings.get("tasks"), settings.get("task_limit")
    if task_limit is not None and not tasks:
        raise DepthAttnError("--task-limit applies to zero-shot tasks: give --tasks too")
    if args.quickstart and tasks and task_limit is None:
        task_limit = QUICKSTART_TASK_LIMIT
    if settings.get("tune_seeds") and not settings.get("tune"):
        raise DepthAttnError("--tune-seeds applies to --tune: give --tune too")
    if settings.get("tune") and settings.get("sweep"):
        raise DepthAttnError("--tune and --sweep do not combine: tune one field, or sweep it")
    if table is not None and not settings.get("tune"):
        raise DepthAttnError(f"the [compare] table {table!r} reports the tuned protocol too: "
                             f"give tune and tune_seeds")
    base = load_train_config(config_path, args.overrides, progress=not args.no_progress)
    methods = settings.get("methods") or (QUICKSTART_METHODS if args.quickstart
                                          else DEFAULT_METHODS)
    seeds = settings.get("seeds") or ([0, 1, 2, 3, 4] if args.quickstart else [0, 1])
    out = settings.get("out") or ("runs/quickstart" if args.quickstart else
                                  f"runs/{Path(config_path).stem}" if has_compare_table
                                  else "runs/compare")
    baseline = settings.get("baseline")
    if settings.get("sweep"):
        run_sweep(base, methods, seeds, out, settings["sweep"], baseline=baseline, tasks=tasks,
                  task_limit=task_limit)
    elif settings.get("tune"):
        result = run_tuned_compare(base, methods, seeds, out, settings["tune"],
                                   settings.get("tune_seeds"), baseline=baseline, tasks=tasks,
                                   task_limit=task_limit)
        if table is not None:
            from depthattn.experiments.paper_table import write_paper_table

            write_paper_table(result, base, Path(out), table)
    else:
        compare(base, methods, seeds, out, baseline=baseline, tasks=tasks,
                task_limit=task_limit)
