"""Step time and activation memory of every cross-layer method relative to vanilla, same run.

    python -m benchmarks.methods                         # tiny preset, CPU
    python -m benchmarks.methods --methods vanilla depth_attention mhc --seq 512 --json out.json

A step is one forward + backward of the training loss (``depthattn.analysis.speed``, which
``measure_speeds`` uses for the comparison table). Activation memory is the bytes autograd keeps
for backward (unique storages seen by a saved-tensors hook): the same measure on CPU and GPU. On
CUDA the peak allocated memory of the step is reported too. Correctness first: every method's
cached decoding must equal its full forward before it is timed.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from depthattn import CausalLM, KVCache, ModelConfig
from depthattn.analysis.speed import saved_activation_bytes, step_loss, train_step_seconds
from depthattn.methods import method_names


def check_decoding(model: CausalLM, vocab: int, device: torch.device) -> float:
    ids = torch.randint(0, vocab, (1, 16), device=device)
    with torch.no_grad():
        cache = KVCache.for_model(model, 1, 16)
        steps = torch.cat([model(ids[:, :6], cache=cache)] +
                          [model(ids[:, t:t + 1], cache=cache) for t in range(6, 16)], 1)
        return (steps - model(ids)).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--methods", nargs="+", default=method_names())
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    methods = ["vanilla"] + [m for m in args.methods if m != "vanilla"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = ModelConfig.from_preset(args.preset)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device)
    models = {}
    for method in methods:
        torch.manual_seed(0)
        models[method] = CausalLM(config.with_method(method)).to(device).train()
        err = check_decoding(models[method].eval(), config.vocab_size, device)
        models[method].train()
        assert err < 1e-4, f"{method}: cached decoding differs from the full forward by {err}"

    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeats + 1):  # first round is warm-up; methods interleaved
        for method, model in models.items():
            times[method].append(train_step_seconds(model, ids))
    rows = []
    for method, model in models.items():
        peak = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step_loss(model, ids).backward()
            model.zero_grad(set_to_none=True)
            peak = torch.cuda.max_memory_allocated()
        rows.append(dict(method=method, params=model.num_parameters(),
                         step_ms=statistics.median(times[method][1:]) * 1e3,
                         activation_bytes=saved_activation_bytes(model, ids), peak_bytes=peak))
    base = rows[0]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"preset {args.preset}, batch {args.batch} x seq {args.seq}, fp32, {name}, "
          f"{torch.get_num_threads()} threads, forward+backward, median of {args.repeats}")
    print(f"{'method':<20}{'params':>12}{'step ms':>10}{'time ratio':>12}{'activ. MiB':>12}"
          f"{'mem ratio':>11}" + (f"{'peak MiB':>10}" if device.type == "cuda" else ""))
    for r in rows:
        line = (f"{r['method']:<20}{r['params']:>12,}{r['step_ms']:>10.1f}"
                f"{r['step_ms'] / base['step_ms']:>12.3f}{r['activation_bytes'] / 2**20:>12.1f}"
                f"{r['activation_bytes'] / base['activation_bytes']:>11.3f}")
        if r["peak_bytes"] is not None:
            line += f"{r['peak_bytes'] / 2**20:>10.1f}"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
