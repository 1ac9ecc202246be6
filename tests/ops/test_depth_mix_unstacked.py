"""The unstacked depth mix against the reference: forward and every gradient, odd sizes."""

from __future__ import annotations

import pytest
import torch

from depthattn.ops.depth_mix import depth_mix, set_depth_mix_impl
from depthattn.ops.depth_mix.reference import depth_mix_reference
from depthattn.ops.depth_mix.unstacked import depth_mix_unstacked

# (dtype, atol) — float64 pins the math, float32 the accumulation order.
PRECISIONS = [(torch.float64, 1e-12), (torch.float32, 1e-5)]


def _inputs(B, H, H_kv, T, d, n, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 2).to(dtype).requires_grad_()

    q = rand(B, H, T, d)
    keys = [rand(B, H_kv, T, d) for _ in range(n)]
    values = [rand(B, H_kv, T, d) for _ in range(n)]
    return q, keys, values, rand(B, H_kv, T, d), rand(B, H_kv, T, d)


@pytest.mark.parametrize("dtype, atol", PRECISIONS)
@pytest.mark.parametrize("H, H_kv", [(4, 4), (4, 2), (8, 2)])
@pytest.mark.parametrize("n", [0, 1, 3])
def test_forward_and_gradients_match_the_reference(dtype, atol, H, H_kv, n):
    args = _inputs(2, H, H_kv, 63, 16, n, dtype)
    grad_out = torch.randn(2, H_kv, 63, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
    leaves = [args[0], *args[1], *args[2], args[3], args[4]]
    outputs, grads = [], []
    for fn in (depth_mix_reference, depth_mix_unstacked):
        out = fn(*args)
        outputs.append(out)
        grads.append(torch.autograd.grad(out, leaves, grad_out))
    torch.testing.assert_close(outputs[1], outputs[0], atol=atol, rtol=0)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, atol=atol * 10, rtol=0)


def test_bfloat16_stays_close_to_the_float32_reference():
    args = _inputs(1, 8, 2, 9, 64, 2, torch.bfloat16)
    want = depth_mix_reference(*[a.float() if torch.is_tensor(a) else [t.float() for t in a]
                                 for a in args])
    got = depth_mix_unstacked(*args)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.02)


def test_dispatcher_default_and_forcing():
    args = _inputs(1, 4, 2, 5, 8, 1, torch.float64)
    try:
        set_depth_mix_impl("reference")
        forced = depth_mix(*args)
    finally:
        set_depth_mix_impl(None)
    torch.testing.assert_close(depth_mix(*args), forced, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"implementation \('triton9'\) is unknown; allowed: reference"):
        set_depth_mix_impl("triton9")
