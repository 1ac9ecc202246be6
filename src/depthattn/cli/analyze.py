"""`depthattn analyze RUN`: depth maps of a trained Depth-Attention run (heatmap, entropies,
their evolution over the checkpoints)."""

from __future__ import annotations

import argparse

HELP = "depth maps of a run: mean depth weight per layer and source, entropies, over training"


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a training run directory")
    parser.add_argument("--windows", type=int, default=64,
                        help="validation windows (of the run's seq_len) to average over")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/analysis)")
    parser.add_argument("--device", default="auto")


def run_analyze(args: argparse.Namespace) -> None:
    from depthattn.analysis.analyze_run import analyze_run

    report = analyze_run(args.path, windows=args.windows, out_dir=args.out, device=args.device)
    entropy = ", ".join(f"L{l}: {e:.3f}" for l, e in enumerate(report["entropy"]) if e is not None)
    print(f"{args.path}: depth maps at steps {[r['step'] for r in report['over_training']]} "
          f"over {report['tokens']:,} tokens; entropy (nats) {entropy}")
    print("written: " + ", ".join(report["figures"]))
