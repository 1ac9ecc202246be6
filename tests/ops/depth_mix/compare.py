"""How every depth mix is compared with the reference: inputs, the float64 yardstick, tolerances.

The yardstick is ``depth_mix_reference`` computed in float64 from the same inputs (and, for
gradients, the same output gradient). An implementation passes where, element by element,

    |got − want| ≤ atol + rtol · |want|          (grad_atol, grad_rtol for every gradient)

The absolute terms are calibrated for inputs of standard deviation 2, what ``make_inputs``
makes (outputs and gradients then reach about 10).

bfloat16 and float16: a correct path computes in float32 and rounds once, to at most half a unit
in the last place (ulp) of the result: rtol is one ulp (the relative spacing at 1.0, the widest),
which leaves room for Triton's interpreter, whose float32 → bfloat16 cast truncates (a full ulp).
The broken variant kept as a counter-example (``softmax_in_low_precision``, the reference with
its scores and softmax in bfloat16 or float16 instead of float32) errs by tens of ulps. Measured
on the tests' inputs (``SHAPES``, queries scaled 1× and 4×) as the worst |got − want| /
(atol + rtol · |want|), which passes at ≤ 1; the last column is the broken variant's closest
call, its smallest worst-case over the shapes it must fail:

    bfloat16, atol 1e-3, rtol 2⁻⁷         forward  gradients  (closest call)
      unstacked, inference                  0.47      0.46
      triton (interpreter)                  0.97      0.93
      broken: softmax in bfloat16            50        56         2.7
    float16, atol 1e-3, rtol 2⁻¹⁰
      unstacked, inference, triton          0.39      0.42
        (interpreter)
      broken: softmax in float16             16        16         1.6

A Triton backward that takes Σ_i α_i ∂L/∂α_i as do · ṽ_l from the rounded ṽ_l fails them too: its
bfloat16 gradients score up to 655 (ops/depth_mix/triton_kernel.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from depthattn.ops.depth_mix import depth_mix_reference


@dataclass(frozen=True)
class Tolerance:
    atol: float  # ṽ, absolute
    rtol: float  # ṽ, relative to |want|
    grad_atol: float  # every gradient
    grad_rtol: float


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(1e-12, 0.0, 1e-11, 0.0),  # pins the math: only summation order
    torch.float32: Tolerance(1e-5, 0.0, 1e-4, 0.0),  # float32 accumulation order
    torch.bfloat16: Tolerance(1e-3, 2.0**-7, 1e-3, 2.0**-7),  # one bfloat16 ulp (module doc)
    torch.float16: Tolerance(1e-3, 2.0**-10, 1e-3, 2.0**-10),  # one float16 ulp
}

SHAPES = [  # H, H_kv, T, d, n: groups of 1, 2 and 4; odd T; one token (decoding);
    # d not a power of two; 0 sources
    (4, 4, 63, 16, 1),
    (4, 1, 1, 64, 2),
    (4, 2, 63, 12, 3),
    (8, 2, 17, 16, 0),
    (8, 2, 5, 32, 2),
]
LOW_PRECISION = [torch.bfloat16, torch.float16]
SHARPNESS = [1.0, 4.0]  # q_scale: scores of standard deviation ~2 and ~8


def make_inputs(B, H, H_kv, T, d, n, dtype, device="cpu", layout="model", seed=0, q_scale=1.0):
    """q (B, H, T, d), n source keys/values, own key/value (B, H_kv, T, d), all leaves, standard
    deviation 2 (q: 2 · q_scale; a larger q_scale sharpens the softmax over depth).
    layout="model": transposed views of (B, T, heads, d) tensors, as the attention makes them."""
    gen = torch.Generator().manual_seed(seed)

    def rand(heads, scale=1.0):
        x = torch.randn(B, T, heads, d, generator=gen, dtype=torch.float64) * 2 * scale
        x = x.to(device=device, dtype=dtype)
        if layout == "model":
            return x.requires_grad_().transpose(1, 2)
        return x.transpose(1, 2).contiguous().requires_grad_()

    q = rand(H, q_scale)
    keys = [rand(H_kv) for _ in range(n)]
    values = [rand(H_kv) for _ in range(n)]
    return q, keys, values, rand(H_kv), rand(H_kv)


def mix_and_grads(fn, args, grad_out):
    q, keys, values, key, value = args
    inputs = [q, *keys, *values, key, value]
    out = fn(q, keys, values, key, value)
    return out, torch.autograd.grad(out, inputs, grad_out)


def in_float64(args):
    """The same inputs as float64 leaves of the same layout: the reference's exact yardstick."""
    q, keys, values, key, value = args

    def exact(x):
        return x.detach().double().requires_grad_()

    return exact(q), [exact(k) for k in keys], [exact(v) for v in values], exact(key), exact(value)


def assert_matches_reference(fn, args, tolerance: Tolerance | None = None, seed=1):
    """fn's ṽ and every gradient against the reference in float64 from the same inputs and the
    same output gradient, within ``tolerance`` (default: the inputs' dtype's); dtypes and shapes
    as the inputs'."""
    dtype = args[4].dtype
    tolerance = tolerance or TOLERANCES[dtype]
    grad_out = torch.randn(args[4].shape, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64).to(device=args[4].device, dtype=dtype)
    want, want_grads = mix_and_grads(depth_mix_reference, in_float64(args), grad_out.double())
    got, got_grads = mix_and_grads(fn, args, grad_out)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, atol=tolerance.atol, rtol=tolerance.rtol)
    names = ["q", *[f"k{j}" for j in range(len(args[1]))], *[f"v{j}" for j in range(len(args[2]))],
             "key", "value"]
    for name, g, w in zip(names, got_grads, want_grads):
        assert g.dtype == dtype, f"grad of {name} is {g.dtype}"
        torch.testing.assert_close(g.double(), w, atol=tolerance.grad_atol,
                                   rtol=tolerance.grad_rtol,
                                   msg=lambda m, name=name: f"grad of {name}: {m}")


def softmax_in_low_precision(q, source_keys, source_values, key, value):
    """A broken depth mix, the counter-example: the reference with its scores, softmax and sum in
    the inputs' dtype (bfloat16, float16) instead of float32 (docs/method.md §3, step 3)."""
    H, H_kv, d = q.shape[1], key.shape[1], q.shape[-1]
    q_bar = q.unflatten(1, (H_kv, H // H_kv)).mean(dim=2)  # (B, H_kv, T, d)
    keys = torch.stack([*source_keys, key], dim=-2)  # (B, H_kv, T, n+1, d)
    values = torch.stack([*source_values, value], dim=-2)
    alpha = torch.softmax(torch.einsum("bgtd,bgtnd->bgtn", q_bar, keys) / math.sqrt(d), dim=-1)
    return torch.einsum("bgtn,bgtnd->bgtd", alpha, values)
