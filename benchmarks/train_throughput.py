"""Training throughput of the real training loop: tokens/s and step time per method, measured in
the same run on the same data, with the ratio to vanilla.

    python -m benchmarks.train_throughput                      # quickstart model, CPU
    python -m benchmarks.train_throughput --steps 30 --methods vanilla depth_attention

Each method trains ``--steps`` optimizer steps through ``depthattn.train.train`` (data loading,
AdamW, clipping, logging included) into a temporary folder; the first ``--warmup`` steps are
excluded from the timing. The methods run alternately ``--rounds`` times and the median is kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from depthattn.train import load_train_config, train
from depthattn.train.metrics import read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="default: the quickstart config")
    parser.add_argument("--methods", nargs="+", default=["vanilla", "depth_attention"])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    config_path = args.config or "quickstart"

    step_times: dict[str, list[float]] = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for method in args.methods:
                config = load_train_config(config_path, [
                    *args.overrides, f"method={method}", f"steps={args.steps}", "log_every=1",
                    "eval_every=0", "checkpoint_every=0", "progress=false", "tensorboard=false",
                    f"run_dir={Path(tmp) / f'{method}-{round_}'}", "eval_windows=1"])
                train(config)
                elapsed = [m["elapsed_s"] for m in read_metrics(config.run_dir) if "loss" in m]
                timed = elapsed[args.warmup:]
                step_times[method].append((timed[-1] - timed[0]) / (len(timed) - 1))
    tokens_per_step = config.tokens_per_step
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    base = statistics.median(step_times[args.methods[0]])
    rows = []
    for method in args.methods:
        step = statistics.median(step_times[method])
        rows.append(dict(method=method, step_ms=step * 1e3, tokens_per_s=tokens_per_step / step,
                         ratio=step / base))
    print(f"training throughput, {device}, {torch.get_num_threads()} threads, "
          f"{tokens_per_step} tokens/step, median over {args.rounds} rounds of "
          f"{args.steps - args.warmup} timed steps")
    print(f"{'method':<20}{'step ms':>10}{'tokens/s':>12}{'step time ratio':>18}")
    for r in rows:
        print(f"{r['method']:<20}{r['step_ms']:>10.1f}{r['tokens_per_s']:>12,.0f}{r['ratio']:>18.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
