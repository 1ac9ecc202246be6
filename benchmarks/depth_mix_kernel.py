"""Depth-mix microbenchmark: every implementation against the reference, same run: median time,
bytes an ideal kernel moves, achieved GB/s and its fraction of the peak.

    python -m benchmarks.depth_mix_kernel                       # CPU, float32, small sizes
    python -m benchmarks.depth_mix_kernel --threads 1 --backward  # steadier on a busy CPU
    python -m benchmarks.depth_mix_kernel --device cuda --dtype bfloat16 --batch 8 --seq 2048 \
        --heads 32 --kv-heads 8 --sources 1 2 4 8 16 --backward --json depth_mix.json

Inputs are laid out as the model makes them (``model/attention.py``): q (B, H, T, d) and every key
and value (B, H_kv, T, d) are transposed views of (B, T, heads, d) tensors.

Ideal bytes (e = bytes per element; n sources; the layer's own key and value are the (n+1)-th):
    forward   reads q, n+1 keys, n+1 values; writes ṽ:   e·B·T·d·(H + (2(n+1) + 1)·H_kv)
    backward  reads q, n+1 keys, n+1 values, dṽ and one float32 log-sum-exp per (token, kv head)
              (the weights are recomputed, not stored); writes dq, n+1 dk, n+1 dv (fresh, not
              accumulated): e·B·T·d·(2H + (4(n+1) + 1)·H_kv) + 4·B·T·H_kv
    fwd+bwd   both, plus the forward's write of the log-sum-exp.
Correctness first: every implementation's output (and, with --backward, every gradient) is
compared with the reference; the largest error relative to the reference's largest magnitude is
printed. An implementation that cannot run here (Triton without CUDA) is printed as failed, with
the reason. Each runs through ``depth_mix(..., impl=name)``, the explicit choice a model makes.
Timing: the implementations interleaved (one call of each per round; a busy machine slows all
alike), median per implementation; before every call a buffer larger than the last-level cache
(256 MiB on GPU, 64 MiB on CPU) is overwritten, so inputs come from memory as in the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.device_peaks import device_name, peak_bandwidth, time_interleaved
from depthattn.ops.depth_mix import IMPLS, depth_mix

BASELINE = "reference"
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def make_inputs(B: int, H: int, H_kv: int, T: int, d: int, n: int, dtype: torch.dtype,
                device: torch.device, grad: bool) -> dict:
    """q and n+1 keys and values as transposed views of (B, T, heads, d) tensors; the leaves
    (what gradients land on) are kept separately."""
    gen = torch.Generator(device).manual_seed(n)

    def leaf(heads: int) -> torch.Tensor:
        x = torch.randn(B, T, heads, d, generator=gen, device=device, dtype=torch.float32)
        return x.to(dtype).requires_grad_(grad)

    q_leaf = leaf(H)
    k_leaves = [leaf(H_kv) for _ in range(n + 1)]
    v_leaves = [leaf(H_kv) for _ in range(n + 1)]
    view = lambda x: x.transpose(1, 2)  # noqa: E731  (B, T, heads, d) → (B, heads, T, d)
    return dict(q=view(q_leaf), keys=[view(k) for k in k_leaves],
                values=[view(v) for v in v_leaves], leaves=[q_leaf, *k_leaves, *v_leaves],
                grad_out=torch.randn(B, H_kv, T, d, generator=gen, device=device).to(dtype))


def call(impl: str, inputs: dict) -> torch.Tensor:
    keys, values = inputs["keys"], inputs["values"]
    return depth_mix(inputs["q"], keys[:-1], values[:-1], keys[-1], values[-1], impl=impl)


def ideal_bytes(B: int, H: int, H_kv: int, T: int, d: int, n: int, e: int) -> dict[str, int]:
    forward = e * B * T * d * (H + (2 * (n + 1) + 1) * H_kv)
    lse = 4 * B * T * H_kv
    backward = e * B * T * d * (2 * H + (4 * (n + 1) + 1) * H_kv) + lse
    return {"forward": forward, "fwd+bwd": forward + lse + backward}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.detach().float().abs().max().clamp_min(1e-12)
    return ((got.detach().float() - want.detach().float()).abs().max() / scale).item()


def outputs(impl: str, inputs: dict, backward: bool) -> list[torch.Tensor]:
    """ṽ, and with ``backward`` the gradient of every leaf for the fixed dṽ."""
    for x in inputs["leaves"]:
        x.grad = None
    out = call(impl, inputs)
    if not backward:
        return [out.detach()]
    out.backward(inputs["grad_out"])
    return [out.detach()] + [x.grad for x in inputs["leaves"]]


def benchmark(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    B, H, H_kv, T, d = args.batch, args.heads, args.kv_heads, args.seq, args.head_dim
    if H % H_kv:
        raise SystemExit(f"--heads ({H}) must be divisible by --kv-heads ({H_kv})")
    named = [name for name in IMPLS if name != "auto"]
    impls = [BASELINE] + [name for name in (args.impls or named) if name != BASELINE]
    passes = ["forward", "fwd+bwd"] if args.backward else ["forward"]
    peak = peak_bandwidth(device)
    e = torch.tensor([], dtype=dtype).element_size()
    flush = 256 * 2**20 if device.type == "cuda" else 64 * 2**20  # beyond L2 / the CPU's L3
    rows = []
    for n in args.sources:
        inputs = make_inputs(B, H, H_kv, T, d, n, dtype, device, grad=args.backward)
        want = outputs(BASELINE, inputs, args.backward)
        nbytes = ideal_bytes(B, H, H_kv, T, d, n, e)
        checked: dict[str, dict] = {}
        steps: dict[str, dict[str, Callable]] = {kind: {} for kind in passes}
        for name in impls:
            row = dict(impl=name, sources=n, status="ok", reason=None, max_rel_err=None)
            try:
                got = outputs(name, inputs, args.backward)
                row["max_rel_err"] = max(relative_error(g, w) for g, w in zip(got, want))
                if row["max_rel_err"] > TOLERANCE.get(dtype, 1e-2):
                    row["status"] = "mismatch"
                forward = torch.no_grad()(lambda name=name: call(name, inputs))
                forward()  # an impl that fails only without grad fails here, not while timed
                steps["forward"][name] = forward
                if args.backward:
                    steps["fwd+bwd"][name] = lambda name=name: outputs(name, inputs,
                                                                       backward=True)
                checked[name] = row
            except Exception as error:  # noqa: BLE001  a broken impl is a row, not a crash
                reason = f"{type(error).__name__}: {error}".splitlines()[0][:160]
                rows.append({**row, "status": "failed", "reason": reason, "pass": None})
        for kind in passes:
            times = time_interleaved(steps[kind], device, args.warmup, args.repeats, flush)
            base_ms = statistics.median(times[BASELINE])
            for name, row in checked.items():
                ms = statistics.median(times[name])
                gbps = nbytes[kind] / (ms / 1e3) / 1e9
                rows.append({**row, "pass": kind, "ms": ms, "ideal_bytes": nbytes[kind],
                             "gb_per_s": gbps, "peak_fraction": gbps * 1e9 / peak.value,
                             "time_ratio": ms / base_ms})
    order = {name: i for i, name in enumerate(impls)}
    rows.sort(key=lambda r: (r["sources"], order[r["impl"]], r["pass"] or ""))
    return dict(device=device_name(device), device_type=device.type, dtype=args.dtype,
                shape=dict(batch=B, heads=H, kv_heads=H_kv, seq=T, head_dim=d),
                peak_bandwidth=peak.value, peak_bandwidth_source=peak.source,
                warmup=args.warmup, repeats=args.repeats, rows=rows)


def print_table(result: dict) -> None:
    shape = result["shape"]
    print(f"depth mix, {result['device']}, {result['dtype']}, B {shape['batch']} T {shape['seq']} "
          f"H {shape['heads']} H_kv {shape['kv_heads']} d {shape['head_dim']}, median of "
          f"{result['repeats']}")
    print(f"peak bandwidth {result['peak_bandwidth'] / 1e9:,.1f} GB/s "
          f"({result['peak_bandwidth_source']}); time ratio = ms / reference ms, same run")
    print(f"{'impl':<11}{'n':>4}  {'pass':<9}{'ms':>10}{'ideal MB':>10}{'GB/s':>9}"
          f"{'% peak':>8}{'time ratio':>12}{'max rel err':>13}")
    for r in result["rows"]:
        if r["status"] == "failed":
            print(f"{r['impl']:<11}{r['sources']:>4}  failed: {r['reason']}")
            continue
        flag = "  MISMATCH" if r["status"] == "mismatch" else ""
        print(f"{r['impl']:<11}{r['sources']:>4}  {r['pass']:<9}{r['ms']:>10.3f}"
              f"{r['ideal_bytes'] / 1e6:>10.1f}{r['gb_per_s']:>9.1f}"
              f"{100 * r['peak_fraction']:>8.1f}{r['time_ratio']:>12.3f}"
              f"{r['max_rel_err']:>13.1e}{flag}")


def main(argv: list[str] | None = None) -> dict:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--sources", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="numbers n of source layers (the layer itself is the (n+1)-th)")
    parser.add_argument("--impls", nargs="+", default=None,
                        choices=[name for name in IMPLS if name != "auto"],
                        help="restrict to these (the reference is always measured)")
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (1 is steadiest when other processes share the cores)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bfloat16" if torch.device(args.device).type == "cuda"
                                else "float32")
    result = benchmark(args)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
