"""`depthattn report RUNS_DIR`: Markdown and self-contained HTML of a comparison or sweep."""

from __future__ import annotations

import argparse

HELP = ("one report of a comparison folder: statistics, curves, sweep, depth maps, KV cache "
        "quantization and batching invariance (Markdown + HTML)")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the --out folder of `depthattn compare` or quickstart")
    parser.add_argument("--windows", type=int, default=16,
                        help="validation windows for the depth maps and the KV-cache table")


def run_report(args: argparse.Namespace) -> None:
    from depthattn.experiments.report import build_report

    md, html = build_report(args.path, windows=args.windows)
    print(f"written: {md}, {html}")
