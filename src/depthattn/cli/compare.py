"""`depthattn compare` (methods x seeds, with statistics and plots) and `depthattn quickstart`
(the README's main job: compare with the shipped quickstart config)."""

from __future__ import annotations

import argparse

HELP = "methods x seeds, with statistics and plots"
QUICKSTART_HELP = ("the README's main job: a small Depth-Attention vs vanilla comparison on the "
                   "offline corpus")


def add_compare_arguments(parser: argparse.ArgumentParser, quickstart: bool = False) -> None:
    if not quickstart:
        parser.add_argument("--config", help="training config file (.toml/.yaml/.json)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods to compare, e.g. vanilla depth_attention:stride=2 "
                             "(default: vanilla depth_attention)")
    parser.add_argument("--seeds", nargs="+", type=int,
                        default=[0, 1, 2] if quickstart else [0, 1])
    parser.add_argument("--out", default="runs/quickstart" if quickstart else "runs/compare")
    parser.add_argument("--baseline", default=None, help="default: vanilla if compared")
    parser.add_argument("--tasks", default="corpus_cloze,corpus_continuation" if quickstart
                        else None,
                        help="also report zero-shot accuracy on these lm-eval tasks, e.g. "
                             "corpus_cloze,corpus_continuation or paper ('' for none)")
    parser.add_argument("--task-limit", type=int, default=500 if quickstart else None,
                        help="documents per zero-shot task (default: all)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="training fields, e.g. steps=400 lr=2e-3")
    parser.set_defaults(quickstart=quickstart)
    if quickstart:
        parser.set_defaults(config=None)


def add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    add_compare_arguments(parser, quickstart=True)


def run_compare(args: argparse.Namespace) -> None:
    from depthattn.compare import run_compare as compare
    from depthattn.train import load_train_config

    config_path = args.config or ("quickstart" if args.quickstart else None)
    base = load_train_config(config_path, args.overrides, progress=not args.no_progress)
    methods = args.methods or ["vanilla", "depth_attention"]
    compare(base, methods, args.seeds, args.out, baseline=args.baseline, tasks=args.tasks,
            task_limit=args.task_limit)
