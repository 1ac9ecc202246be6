"""`depthattn flops`: parameters, FLOPs and state per token of a method on a preset."""

from __future__ import annotations

import argparse
from typing import Any

from depthattn.analysis.cost import (
    BYTES_PER_ELEMENT,
    cost_report,
    format_cost_report,
    format_cost_table,
)
from depthattn.methods import method_names
from depthattn.model.config import PRESETS, ModelConfig
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.parsing import parse_key_values

HELP = "parameters, FLOPs and state per token of a method"


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["stride=2", "recent_window=1"]`` → dict; values parsed as JSON when they are JSON."""
    return parse_key_values(items or [], what="--option")


def add_flops_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="3b", help=f"one of {', '.join(PRESETS)} (default 3b)")
    parser.add_argument("--method", default="depth_attention",
                        help="a registered method, or 'all' for a table of every method with "
                             "its default options (default depth_attention)")
    parser.add_argument("--seq", type=int, default=None,
                        help="sequence length T for the attention FLOPs (default: the preset's "
                             "max_seq_len)")
    parser.add_argument("--option", action="append", default=[], metavar="key=value",
                        help="a method option, repeatable, e.g. --option stride=12")
    parser.add_argument("--dtype", default="bf16", choices=sorted(BYTES_PER_ELEMENT),
                        help="element type for bytes (default bf16)")


def run_flops(args: argparse.Namespace) -> None:
    options = parse_options(args.option)
    if args.method == "all":
        if options:
            raise DepthAttnError("--option needs one --method; 'all' uses every method's defaults")
        reports = [cost_report(ModelConfig.from_preset(args.preset, method=name), args.seq,
                               args.dtype, label=name) for name in method_names()]
        print(f"{args.preset}: T = {reports[0].backbone.seq_len}, {args.dtype}; KV cache and "
              f"state in elements per token")
        print(format_cost_table(reports))
        return
    config = ModelConfig.from_preset(args.preset, method=args.method, method_options=options)
    report = cost_report(config, args.seq, args.dtype, label=f"{args.preset} / {args.method}")
    print(format_cost_report(report))
