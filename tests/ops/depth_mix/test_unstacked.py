"""The unstacked depth mix (training and prefill) against the reference in float64: forward and
every gradient, odd sizes (T = 63), both memory layouts; tolerances in compare.py."""

from __future__ import annotations

import pytest
import torch

from depthattn.ops.depth_mix.unstacked import depth_mix_unstacked
from tests.ops.depth_mix.compare import (
    LOW_PRECISION,
    SHAPES,
    SHARPNESS,
    assert_matches_reference,
    make_inputs,
)


@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
@pytest.mark.parametrize("layout", ["model", "contiguous"])
def test_float32_matches_reference(H, H_kv, T, d, n, layout):
    assert_matches_reference(depth_mix_unstacked,
                             make_inputs(2, H, H_kv, T, d, n, torch.float32, layout=layout))


@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
def test_float64_matches_reference_exactly(H, H_kv, T, d, n):
    assert_matches_reference(depth_mix_unstacked, make_inputs(2, H, H_kv, T, d, n, torch.float64))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
@pytest.mark.parametrize("q_scale", SHARPNESS)
def test_low_precision_rounds_only_the_result(dtype, H, H_kv, T, d, n, q_scale):
    """Computed in float32 and rounded once: within one ulp of the exact mix, every gradient too."""
    assert_matches_reference(depth_mix_unstacked,
                             make_inputs(2, H, H_kv, T, d, n, dtype, q_scale=q_scale))


def test_backward_keeps_the_weights_not_stacked_copies():
    """Beyond tensors alive anyway (q, keys, values), backward keeps the (B, H_kv, T, n+1) weights,
    the group-mean query and per-source scores at most: never a stacked (…, n+1, d) copy."""
    B, H, H_kv, T, d, n = 2, 8, 2, 11, 16, 3
    args = make_inputs(B, H, H_kv, T, d, n, torch.float32)
    alive = {t.data_ptr() for t in [args[0], *args[1], *args[2], args[3], args[4]]}
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        depth_mix_unstacked(*args)
    extra = {t.data_ptr(): t.numel() for t in saved if t.data_ptr() not in alive}
    assert max(extra.values()) <= B * H_kv * T * d  # q̄ is the largest
    assert sum(extra.values()) < (n + 1) * B * H_kv * T * d  # less than one stacked copy
