"""Cached decoding speed and KV-cache size per method, with ratios to vanilla, same run.

    python -m benchmarks.decode                              # tiny preset, CPU
    python -m benchmarks.decode --preset 360m --batch 1 32 --context 1024 --new 64 --dtype bfloat16
    python -m benchmarks.decode --modes eager compiled       # also the compiled static-cache step

For each batch size: prefill ``--context`` tokens, then time ``--new`` single-token steps
(median over rounds, methods interleaved). ``eager``: the growing ``KVCache``; ``compiled``: the
``StaticKVCache`` and the ``torch.compile``d step of ``generate(..., compile=True)`` (compiled
before timing). The speed ratio is against the first method in the same mode. Correctness
first: the decoded logits of every method equal its full forward.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from depthattn import CausalLM, KVCache, ModelConfig
from depthattn.analysis.speed import DECODE_MODES as MODES
from depthattn.analysis.speed import decode_seconds


@torch.no_grad()
def check(model: CausalLM, device) -> None:
    ids = torch.randint(0, model.config.vocab_size, (2, 20), device=device)
    cache = KVCache.for_model(model, 2, 20)
    steps = torch.cat([model(ids[:, :12], cache=cache)] +
                      [model(ids[:, t:t + 1], cache=cache) for t in range(12, 20)], 1)
    err = (steps.float() - model(ids).float()).abs().max().item()
    tolerance = 1e-4 if steps.dtype == torch.float32 else 5e-2
    assert err < tolerance, f"{model.config.method}: decoding differs from the full forward by {err}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--quickstart", action="store_true",
                        help="the quickstart's model (its config's preset and overrides) "
                             "instead of --preset")
    parser.add_argument("--methods", nargs="+", default=["vanilla", "depth_attention"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["eager"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    # RoPE has no table to outgrow: the model only needs max_seq_len to admit the whole run
    if args.quickstart:
        from depthattn.train import load_train_config

        train_config = load_train_config("quickstart", [], progress=False)
        args.preset, overrides = train_config.model, dict(train_config.model_overrides)
        overrides["vocab_size"] = train_config.vocab_size
    else:
        overrides = {}
    preset = ModelConfig.from_preset(args.preset, **overrides)
    config = ModelConfig.from_preset(
        args.preset, **overrides, max_seq_len=max(preset.max_seq_len, args.context + args.new))
    models = {}
    for method in args.methods:
        torch.manual_seed(0)
        models[method] = CausalLM(config.with_method(method)).to(device, dtype).eval()
        check(models[method], device)

    rows = []
    for mode in args.modes:
        for batch in args.batch:
            if mode == "compiled":  # compile (and warm up) outside the timing
                for model in models.values():
                    decode_seconds(model, batch, args.context, args.new, device, mode)
            times: dict[str, list[float]] = {m: [] for m in args.methods}
            for _ in range(args.rounds):
                for method, model in models.items():
                    times[method].append(decode_seconds(model, batch, args.context, args.new,
                                                        device, mode))
            base = statistics.median(times[args.methods[0]])
            for method, model in models.items():
                step = statistics.median(times[method])
                cache_bytes = KVCache.for_model(model, batch, args.context + args.new).nbytes
                rows.append(dict(mode=mode, method=method, batch=batch, step_ms=step * 1e3,
                                 tokens_per_s=batch / step, speed_ratio=base / step,
                                 cache_bytes=cache_bytes))
    base_bytes = {r["batch"]: r["cache_bytes"] for r in rows if r["method"] == args.methods[0]}
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    model_name = "quickstart model" if args.quickstart else f"preset {args.preset}"
    print(f"decoding, {model_name}, {args.dtype}, {name}, {torch.get_num_threads()} "
          f"threads, context {args.context}, {args.new} new tokens, median of {args.rounds}")
    print(f"{'mode':<10}{'method':<18}{'batch':>6}{'ms/step':>10}{'tokens/s':>11}{'speed ratio':>13}"
          f"{'KV cache MiB':>14}{'bytes ratio':>13}")
    for r in rows:
        print(f"{r['mode']:<10}{r['method']:<18}{r['batch']:>6}{r['step_ms']:>10.2f}{r['tokens_per_s']:>11,.0f}"
              f"{r['speed_ratio']:>13.3f}{r['cache_bytes'] / 2**20:>14.1f}"
              f"{r['cache_bytes'] / base_bytes[r['batch']]:>13.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
