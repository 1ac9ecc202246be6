"""The `depthattn` command."""

from __future__ import annotations

import argparse
import logging
import sys


def _demo(args: argparse.Namespace) -> None:
    from depthattn.demo import run_demo

    run_demo(preset=args.preset, seq_len=args.seq_len, new_tokens=args.new_tokens,
             seed=args.seed, stride=args.stride, recent_window=args.recent_window)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthattn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="Depth-Attention vs vanilla on a tiny random model: "
                                            "forward, cached decoding, depth weights, cache size")
    demo.add_argument("--preset", default="tiny")
    demo.add_argument("--seq-len", type=int, default=256)
    demo.add_argument("--new-tokens", type=int, default=8)
    demo.add_argument("--stride", type=int, default=None, help="default: num_layers // 2")
    demo.add_argument("--recent-window", type=int, default=0)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"depthattn {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
