"""`depthattn demo`: Depth-Attention vs vanilla on a tiny random model."""

from __future__ import annotations

import argparse

from depthattn.cli.options import add_depth_attention_options
from depthattn.utils.parsing import parse_key_values

HELP = ("Depth-Attention vs vanilla on a tiny random model: forward, cached decoding, depth "
        "weights, cache size")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=8)
    add_depth_attention_options(parser, recent_window_default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", default=None, choices=["applications", "recurrent"],
                        help="a looped model's source rule (default applications)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="model fields over the preset, e.g. a looped geometry: "
                             "prelude_layers=1 loop_layers=2 loop_iterations=3")


def run_demo(args: argparse.Namespace) -> None:
    from depthattn.experiments.demo import run_demo as demo

    demo(preset=args.preset, seq_len=args.seq_len, new_tokens=args.new_tokens, seed=args.seed,
         stride=args.stride, recent_window=args.recent_window, sources=args.sources,
         overrides=parse_key_values(args.overrides, what="model override"))
