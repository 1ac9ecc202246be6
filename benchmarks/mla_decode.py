"""Decoding an MLA model: the absorbed form against the expanded one, same run.

    python -m benchmarks.mla_decode                                   # mla-quickstart, CPU
    python -m benchmarks.mla_decode --preset mla-tiny --context 128 1024 --batch 1 8

For each method, batch size and context: prefill ``--context`` tokens, then time ``--new``
single-token steps (median over rounds; the two forms interleaved), once with every layer in the
expanded form (keys and values expanded from the whole latent cache each step, as transformers'
DeepseekV3Attention does) and once in the absorbed form (attention over the latent entries as one
shared kv head). The ratio is absorbed ÷ expanded tokens/s (> 1: the absorbed form is faster).
Correctness first: both forms' decoded logits equal the full forward.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from depthattn import CausalLM, KVCache, ModelConfig
from depthattn.analysis.speed import decode_seconds
from depthattn.experiments.compare import parse_method

FORMS = {"expanded": False, "absorbed": True}


def set_form(model: CausalLM, absorbed: bool | None) -> None:
    for layer in model.model.layers:
        layer.self_attn.absorbed = absorbed


@torch.no_grad()
def check(model: CausalLM) -> None:
    ids = torch.randint(0, model.config.vocab_size, (2, 20))
    set_form(model, False)
    full = model(ids)
    for absorbed in FORMS.values():
        set_form(model, absorbed)
        cache = KVCache.for_model(model, 2, 20)
        steps = torch.cat([model(ids[:, :12], cache=cache)] +
                          [model(ids[:, t:t + 1], cache=cache) for t in range(12, 20)], 1)
        err = (steps - full).abs().max().item()
        if not err < 1e-4:
            raise RuntimeError(f"{model.config.method}: decoding differs from the full forward "
                               f"by {err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mla-quickstart")
    parser.add_argument("--methods", nargs="+",
                        default=["vanilla", "depth_attention", "depth_attention:mla_mix=values"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--context", nargs="+", type=int, default=[128, 1024])
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    max_len = max(args.context) + args.new
    print(f"preset {args.preset}, {args.new} decode steps after the context, median of "
          f"{args.rounds} rounds, float32, {torch.get_num_threads()} CPU threads")
    print()
    print("| method | batch | context | expanded tok/s | absorbed tok/s | absorbed ÷ expanded |")
    print("|---|---:|---:|---:|---:|---:|")
    for spec in args.methods:
        run = parse_method(spec)
        torch.manual_seed(0)
        config = ModelConfig.from_preset(args.preset, max_seq_len=max(max_len, 1024),
                                         method=run.method, method_options=run.options)
        model = CausalLM(config).eval()
        check(model)
        for batch in args.batch:
            for context in args.context:
                seconds = {form: [] for form in FORMS}
                for _ in range(args.rounds):
                    for form, absorbed in FORMS.items():
                        set_form(model, absorbed)
                        seconds[form].append(decode_seconds(model, batch, context, args.new,
                                                            "cpu"))
                tps = {form: batch / statistics.median(s) for form, s in seconds.items()}
                print(f"| {spec} | {batch} | {context} | {tps['expanded']:,.1f} | "
                      f"{tps['absorbed']:,.1f} | {tps['absorbed'] / tps['expanded']:.2f} |",
                      flush=True)
        set_form(model, None)


if __name__ == "__main__":
    main()
