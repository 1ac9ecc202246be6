"""The `depthattn` command, one module per subcommand (each: HELP, add_*_arguments, run_*).

Subcommand modules import their heavy dependencies when they run, so `depthattn --help` and
argument errors stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from depthattn.cli import (
    compare,
    convert,
    demo,
    evaluate,
    flops,
    generate,
    prepare,
    train,
)

Command = tuple[str, Callable[[argparse.ArgumentParser], None],
                Callable[[argparse.Namespace], object]]

# name -> (help, add its arguments, run it); in the order `depthattn --help` lists them
COMMANDS: dict[str, Command] = {
    "quickstart": (compare.QUICKSTART_HELP, compare.add_quickstart_arguments, compare.run_compare),
    "demo": (demo.HELP, demo.add_demo_arguments, demo.run_demo),
    "prepare": (prepare.HELP, prepare.add_prepare_arguments, prepare.run_prepare),
    "train": (train.HELP, train.add_train_arguments, train.run_train),
    "eval": (evaluate.HELP, evaluate.add_eval_arguments, evaluate.run_eval),
    "compare": (compare.HELP, compare.add_compare_arguments, compare.run_compare),
    "convert": (convert.HELP, convert.add_convert_arguments, convert.run_convert),
    "generate": (generate.HELP, generate.add_generate_arguments, generate.run_generate),
    "flops": (flops.HELP, flops.add_flops_arguments, flops.run_flops),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depthattn", description="Depth-Attention and its baselines: " + ", ".join(COMMANDS))
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"depthattn {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
