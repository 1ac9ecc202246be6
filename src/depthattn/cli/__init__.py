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
    analyze,
    compare,
    convert,
    demo,
    evaluate,
    flops,
    generate,
    harness,
    prepare,
    report,
    train,
)
from depthattn.utils.errors import DepthAttnError

Command = tuple[str, Callable[[argparse.ArgumentParser], None],
                Callable[[argparse.Namespace], object]]

# name -> (help, add its arguments, run it); in the order `depthattn --help` lists them
COMMANDS: dict[str, Command] = {
    "quickstart": (compare.QUICKSTART_HELP, compare.add_quickstart_arguments, compare.run_compare),
    "demo": (demo.HELP, demo.add_demo_arguments, demo.run_demo),
    "prepare": (prepare.HELP, prepare.add_prepare_arguments, prepare.run_prepare),
    "train": (train.HELP, train.add_train_arguments, train.run_train),
    "eval": (evaluate.HELP, evaluate.add_eval_arguments, evaluate.run_eval),
    "lm-eval": (harness.HELP, harness.add_lm_eval_arguments, harness.run_lm_eval),
    "compare": (compare.HELP, compare.add_compare_arguments, compare.run_compare),
    "convert": (convert.HELP, convert.add_convert_arguments, convert.run_convert),
    "generate": (generate.HELP, generate.add_generate_arguments, generate.run_generate),
    "flops": (flops.HELP, flops.add_flops_arguments, flops.run_flops),
    "analyze": (analyze.HELP, analyze.add_analyze_arguments, analyze.run_analyze),
    "report": (report.HELP, report.add_report_arguments, report.run_report),
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["lm-eval"]:
        # lm-eval's own command line follows, passed on unparsed (see depthattn.cli.harness)
        return argparse.Namespace(command="lm-eval", run=harness.run_lm_eval,
                                  lm_eval_args=argv[1:])
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        code = args.run(args)
    # Our own errors, and the machine's (OSError: a full disk, a folder without permission, a
    # missing file), are one line; anything else (a CUDA out-of-memory, a shape error, a bug)
    # keeps its traceback.
    except (DepthAttnError, OSError) as error:
        print(f"depthattn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as stopped:
        # An error that carries its own exit status and message (training stopped by SIGTERM
        # or SIGINT after its checkpoint, from `train` or from `compare`): no traceback.
        code = getattr(stopped, "exit_code", None)
        if not isinstance(code, int):
            raise
        print(f"depthattn {args.command}: {stopped}", file=sys.stderr)
        return code
    # a subcommand may return its exit status (e.g. train stopped by a signal: 128 + signum)
    return code if isinstance(code, int) else 0
