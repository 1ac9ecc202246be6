"""Options that more than one command takes."""

from __future__ import annotations

import argparse


def add_depth_attention_options(parser: argparse.ArgumentParser,
                                recent_window_default: int | None = None) -> None:
    """--stride and --recent-window: Depth-Attention's s and w (docs/method.md §2)."""
    parser.add_argument("--stride", type=int, default=None,
                        help="Depth-Attention stride s (default num_layers // 2)")
    parser.add_argument("--recent-window", type=int, default=recent_window_default,
                        help="Depth-Attention recent window w (default 0)")
