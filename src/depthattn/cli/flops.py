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
    parser.add_argument("--preset", default="3b",
                        help=f"one of {', '.join(PRESETS)} (default 3b); the mla-* presets have "
                             f"multi-head latent attention")
    parser.add_argument("--method", default="depth_attention",
                        help="a registered method, or 'all' for a table of every method with "
                             "its default options (default depth_attention); on an MLA preset "
                             "Depth-Attention takes --option mla_mix=latent or values")
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
        reports, refused = [], []
        for name in method_names():
            try:
                config = ModelConfig.from_preset(args.preset, method=name)
                reports.append(cost_report(config, args.seq, args.dtype, label=name))
            except DepthAttnError as error:  # a method that refuses this geometry (MLA)
                refused.append(f"n/a: {error}")
        backbone = reports[0].backbone
        print(f"{args.preset}: T = {backbone.seq_len}, {args.dtype}; KV cache and state in "
              f"elements per token; KV cache {backbone.kv_cache_formula}")
        print(format_cost_table(reports))
        for line in refused:
            print(line)
        return
    config = ModelConfig.from_preset(args.preset, method=args.method, method_options=options)
    report = cost_report(config, args.seq, args.dtype, label=f"{args.preset} / {args.method}")
    print(format_cost_report(report))
