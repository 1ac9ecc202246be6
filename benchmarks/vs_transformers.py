"""Our vanilla CausalLM against transformers' Qwen3ForCausalLM: training step and greedy decoding.

    python -m benchmarks.vs_transformers                          # tiny preset, CPU, float32
    python -m benchmarks.vs_transformers --preset 360m --seq 2048 --batch 8 --json out.json  # CUDA

Both models have the same geometry, the same weights (ours loads Qwen3's state dict) and the same
dtype (no autocast). Correctness first: equal logits, equal losses. Then, methods interleaved
round by round, medians:

* training step = forward + loss + backward + AdamW step, on (batch, seq) tokens. transformers:
  ``model(ids, labels=ids).loss`` with SDPA attention (its loss upcasts the full logits to
  float32). Ours: ``CausalLM.loss`` (chunked LM-head cross-entropy, no full logits), eager and,
  with ``--compile`` (default on CUDA only: compiling on a small CPU takes minutes),
  ``torch.compile(model.loss)``.
* greedy decoding from a ``--context``-token random prompt, ``--new`` tokens: transformers
  ``generate`` with its default DynamicCache, ours ``depthattn.generate`` with its preallocated
  KVCache; with ``--compile-decode``, also transformers with its static cache and compiled
  forward (``cache_implementation="static"``) and ours with ``generate(..., compile=True)``
  (StaticKVCache and a compiled step), both compiled before timing. Timed from the first to the last new token (a streamer stamps each), so the prefill
  is excluded; the median step over all runs gives tokens/s = batch / step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import CompileConfig, Qwen3ForCausalLM

from depthattn import CausalLM, ModelConfig, generate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(config: ModelConfig, dtype: torch.dtype, device: torch.device):
    """transformers' Qwen3 (SDPA) and our vanilla model with identical weights."""
    hf_config = config.to_qwen3()
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(hf_config).to(device, dtype)
    hf.generation_config.eos_token_id = None  # random weights: never stop early
    hf.generation_config.pad_token_id = 0
    ours = CausalLM(config).to(device, dtype)
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf, ours


@torch.no_grad()
def check(hf, ours, config: ModelConfig, device: torch.device) -> None:
    ids = torch.randint(0, config.vocab_size, (2, 48), device=device)
    float32 = next(ours.parameters()).dtype == torch.float32
    err = (hf(ids).logits.float() - ours(ids).float()).abs().max().item()
    assert err < (1e-4 if float32 else 5e-2), f"logits differ from transformers' by {err}"
    hf_loss = hf(ids, labels=ids).loss.item()
    our_loss = ours.loss(ids, shifted_targets(ids)).item()
    assert abs(hf_loss - our_loss) < (1e-5 if float32 else 1e-2), \
        f"loss {our_loss} differs from transformers' {hf_loss}"


def shifted_targets(ids: torch.Tensor) -> torch.Tensor:
    """Next-token targets, -100 at the last position: what transformers' labels=ids computes."""
    return torch.nn.functional.pad(ids[:, 1:], (0, 1), value=-100)


def train_steps(hf, ours, compile_: bool, config: ModelConfig, batch: int, seq: int,
                device: torch.device):
    """name → a function running one training step on fresh random tokens."""
    models = {"transformers (sdpa)": hf, "ours eager": ours}
    if compile_:
        compiled = CausalLM(config).to(device, next(ours.parameters()).dtype)
        compiled.load_state_dict(ours.state_dict())
        models["ours compiled"] = compiled
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    targets = shifted_targets(ids)
    steps = {}
    for name, model in models.items():
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if model is hf:
            def loss_fn(hf=hf):
                return hf(ids, labels=ids).loss
        else:
            loss = torch.compile(model.loss) if name == "ours compiled" else model.loss

            def loss_fn(loss=loss):
                return loss(ids, targets)

        def step(loss_fn=loss_fn, optimizer=optimizer):
            loss_fn().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = step
    return steps


def time_once(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class Stamps:
    """A streamer for both generate functions: records when each new token arrives."""

    def __init__(self, device: torch.device, skip_first: bool) -> None:
        self.device, self.skip, self.times = device, skip_first, []

    def put(self, value: torch.Tensor) -> None:
        if self.skip:  # transformers first pushes the prompt
            self.skip = False
            return
        _sync(self.device)
        self.times.append(time.perf_counter())

    def __call__(self, value: torch.Tensor) -> None:
        self.put(value)

    def end(self) -> None:
        pass


@torch.no_grad()
def decode_seconds(name: str, model, ids: torch.Tensor, new: int,
                   device: torch.device) -> list[float]:
    """Seconds of each decoding step (batch tokens each) after the first; prefill excluded."""
    model.eval()
    mask = torch.ones_like(ids)
    if name.startswith("transformers"):
        stamps = Stamps(device, skip_first=True)
        static = {}
        if "static" in name:  # its compiled decoding; on CPU compilation must be asked for
            config = CompileConfig()
            config._compile_all_devices = True  # transformers' switch (not an init argument)
            static = dict(cache_implementation="static", compile_config=config)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                             streamer=stamps, **static)
    else:
        stamps = Stamps(device, skip_first=False)
        out = generate(model, ids, attention_mask=mask, max_new_tokens=new, streamer=stamps,
                       compile="compiled" in name)
    assert out.shape[1] == ids.shape[1] + new and len(stamps.times) == new, name
    return [b - a for a, b in zip(stamps.times, stamps.times[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--seq", type=int, default=256, help="training sequence length")
    parser.add_argument("--batch", type=int, default=4, help="training batch size")
    parser.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction,
                        help="also time torch.compile(model.loss) (default: on CUDA only)")
    parser.add_argument("--decode-batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--compile-decode", action="store_true",
                        help="also time both compiled static-cache decoders")
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--new", type=int, default=16, help="new tokens per decoding run (>= 2)")
    parser.add_argument("--rounds", type=int, default=5, help="training rounds (median)")
    parser.add_argument("--decode-rounds", type=int, default=None,
                        help="generate calls per model and batch (default: 3 on CUDA; 1 on CPU, "
                             "where a batch-32 prefill of 1000 tokens takes seconds)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    compile_ = args.compile if args.compile is not None else device.type == "cuda"
    decode_rounds = args.decode_rounds or (3 if device.type == "cuda" else 1)
    config = ModelConfig.from_preset(args.preset)
    if args.new < 2:
        raise SystemExit(f"--new ({args.new}) must be at least 2")
    for what, length in (("--seq", args.seq), ("--context + --new", args.context + args.new)):
        if length > config.max_seq_len:
            raise SystemExit(f"{what} ({length}) exceeds the preset's max_seq_len "
                             f"({config.max_seq_len})")
    hf, ours = build(config, dtype, device)
    check(hf, ours, config, device)

    rows = []
    steps = train_steps(hf, ours, compile_, config, args.batch, args.seq, device)
    for step in steps.values():  # warm-up (compilation, allocator, first AdamW state)
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    peak: dict[str, float | None] = {}
    for _ in range(args.rounds):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name].append(time_once(step, device))
            peak[name] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    base = statistics.median(times["transformers (sdpa)"])
    for name in steps:
        seconds = statistics.median(times[name])
        rows.append(dict(kind="train step", name=name, batch=args.batch, ms=seconds * 1e3,
                         tokens_per_s=args.batch * args.seq / seconds, ratio=base / seconds,
                         peak_mib=peak[name]))
    del steps
    hf.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)

    for batch in args.decode_batch:
        ids = torch.randint(0, config.vocab_size, (batch, args.context), device=device)
        decoders = {"transformers": hf, "ours": ours}
        if args.compile_decode:
            decoders.update({"transformers (static, compiled)": hf, "ours (compiled)": ours})
            for name in list(decoders)[2:]:  # compile before timing
                decode_seconds(name, decoders[name], ids, args.new, device)
        seconds: dict[str, list[float]] = {name: [] for name in decoders}
        for _ in range(decode_rounds):
            for name, model in decoders.items():
                seconds[name].extend(decode_seconds(name, model, ids, args.new, device))
        base = statistics.median(seconds["transformers"])
        for name in decoders:
            step = statistics.median(seconds[name])
            rows.append(dict(kind="decode", name=name, batch=batch, ms=step * 1e3,
                             tokens_per_s=batch / step, ratio=base / step, peak_mib=None))

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"ours vs transformers Qwen3ForCausalLM, preset {args.preset}, {dtype_name}, "
          f"{device_name}, {torch.get_num_threads()} threads; train: batch {args.batch} x seq "
          f"{args.seq}, median of {args.rounds}; decode: context {args.context}, {args.new} new "
          f"tokens, median step of {decode_rounds} run(s)")
    print(f"{'pass':<12}{'model':<32}{'batch':>6}{'ms':>10}{'tokens/s':>12}"
          f"{'ours/transformers':>19}{'peak MiB':>10}")
    for r in rows:
        peak_text = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        print(f"{r['kind']:<12}{r['name']:<32}{r['batch']:>6}{r['ms']:>10.2f}"
              f"{r['tokens_per_s']:>12,.0f}{r['ratio']:>19.3f}{peak_text:>10}")
    print("ms: per training step, or per decoding step (batch tokens); ratio: tokens/s ours over "
          "transformers' (1.000 on transformers' rows)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name, "preset": args.preset, "dtype": dtype_name,
                       "config": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
