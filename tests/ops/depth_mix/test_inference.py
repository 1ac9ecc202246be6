"""The inference depth mix (decoding: few tokens, no gradient) against the reference in float64:
forward and every gradient (it is differentiable, though "auto" takes it only without one), odd
sizes (T = 63), both memory layouts; tolerances in compare.py."""

from __future__ import annotations

import pytest
import torch

from depthattn.ops.depth_mix.inference import depth_mix_inference
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
    assert_matches_reference(depth_mix_inference,
                             make_inputs(2, H, H_kv, T, d, n, torch.float32, layout=layout))


@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
def test_float64_matches_reference_exactly(H, H_kv, T, d, n):
    assert_matches_reference(depth_mix_inference, make_inputs(2, H, H_kv, T, d, n, torch.float64))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
@pytest.mark.parametrize("q_scale", SHARPNESS)
def test_low_precision_rounds_only_the_result(dtype, H, H_kv, T, d, n, q_scale):
    """Computed in float32 and rounded once: within one ulp of the exact mix, every gradient too."""
    assert_matches_reference(depth_mix_inference,
                             make_inputs(2, H, H_kv, T, d, n, dtype, q_scale=q_scale))

