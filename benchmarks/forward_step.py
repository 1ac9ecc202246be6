"""Forward and training-step time per method, with the ratio to vanilla measured in the same run.

    python -m benchmarks.forward_step --preset tiny --seq 256 512 --batch 4
    python -m benchmarks.forward_step --json results.json

Checks correctness first (Depth-Attention's parameters equal vanilla's; cached decoding equals
the full forward), then times each (method, seq) pair as the median over repeats, with the
methods interleaved so that drifts of the machine hit both alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from depthattn import CausalLM, KVCache, ModelConfig


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _check(models: dict[str, CausalLM], vocab: int, device: torch.device) -> None:
    counts = {name: m.num_parameters() for name, m in models.items()}
    assert len(set(counts.values())) == 1, f"parameter counts differ: {counts}"
    ids = torch.randint(0, vocab, (1, 24), device=device)
    for name, model in models.items():
        with torch.no_grad():
            full = model(ids)
            cache = KVCache.for_model(model, 1, 24)
            steps = torch.cat([model(ids[:, :8], cache=cache)] +
                              [model(ids[:, t:t + 1], cache=cache) for t in range(8, 24)], 1)
        err = (steps - full).abs().max().item()
        assert err < 1e-4, f"{name}: cached decoding differs from the full forward by {err}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--methods", nargs="+", default=["vanilla", "depth_attention"])
    parser.add_argument("--seq", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    base = ModelConfig.from_preset(args.preset)
    models = {}
    for method in args.methods:
        models[method] = CausalLM(base.with_method(method)).to(device)
        models[method].load_state_dict(next(iter(models.values())).state_dict())
    _check(models, base.vocab_size, device)

    rows = []
    for seq in args.seq:
        ids = torch.randint(0, base.vocab_size, (args.batch, seq), device=device)
        timings: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):  # interleave methods
            for method, model in models.items():
                def forward():
                    with torch.no_grad():
                        model(ids)

                def train_step():
                    model.zero_grad(set_to_none=True)
                    logits = model(ids[:, :-1])
                    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()

                timings.setdefault((method, "forward"), []).extend(_time(forward, 1))
                timings.setdefault((method, "train step"), []).extend(_time(train_step, 1))
        for kind in ("forward", "train step"):
            base_ms = statistics.median(timings[(args.methods[0], kind)]) * 1e3
            for method in args.methods:
                ms = statistics.median(timings[(method, kind)]) * 1e3
                rows.append(dict(method=method, kind=kind, seq=seq, batch=args.batch,
                                 ms=round(ms, 3), ratio=round(ms / base_ms, 4),
                                 tokens_per_s=round(args.batch * seq / ms * 1e3)))

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"preset {args.preset}, batch {args.batch}, fp32, {device.type} ({device_name}), "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'method':<18}{'pass':<12}{'seq':>6}{'ms':>10}{'tokens/s':>12}{'ratio':>8}")
    for r in rows:
        print(f"{r['method']:<18}{r['kind']:<12}{r['seq']:>6}{r['ms']:>10.2f}"
              f"{r['tokens_per_s']:>12,}{r['ratio']:>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name, "preset": args.preset, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
