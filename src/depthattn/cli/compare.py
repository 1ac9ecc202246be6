"""`depthattn compare` (methods x seeds, with statistics and plots) and `depthattn quickstart`
(the README's main job: compare with the shipped quickstart config)."""

from __future__ import annotations

import argparse

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
    parser.add_argument("--seeds", nargs="+", type=int,
                        default=[0, 1, 2, 3, 4] if quickstart else [0, 1])
    parser.add_argument("--out", default="runs/quickstart" if quickstart else "runs/compare")
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
    from depthattn.train import load_train_config

    if args.task_limit is not None and not args.tasks:
        raise DepthAttnError("--task-limit applies to zero-shot tasks: give --tasks too")
    task_limit = args.task_limit
    if args.quickstart and args.tasks and task_limit is None:
        task_limit = QUICKSTART_TASK_LIMIT
    config_path = args.config or ("quickstart" if args.quickstart else None)
    base = load_train_config(config_path, args.overrides, progress=not args.no_progress)
    methods = args.methods or (QUICKSTART_METHODS if args.quickstart else DEFAULT_METHODS)
    if args.sweep:
        run_sweep(base, methods, args.seeds, args.out, args.sweep, baseline=args.baseline,
                  tasks=args.tasks, task_limit=task_limit)
    else:
        compare(base, methods, args.seeds, args.out, baseline=args.baseline, tasks=args.tasks,
                task_limit=task_limit)
