"""The tolerances of compare.py can fail: a broken variant, the reference with its softmax in
bfloat16 (float16) instead of float32, is rejected on every shape with a source (with none,
α = 1 and the variant is exact)."""

from __future__ import annotations

import pytest

from tests.ops.depth_mix.compare import (
    LOW_PRECISION,
    SHAPES,
    SHARPNESS,
    assert_matches_reference,
    make_inputs,
    softmax_in_low_precision,
)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("H, H_kv, T, d, n", [s for s in SHAPES if s[-1] > 0])
@pytest.mark.parametrize("q_scale", SHARPNESS)
def test_a_softmax_in_low_precision_fails_the_tolerance(dtype, H, H_kv, T, d, n, q_scale):
    args = make_inputs(2, H, H_kv, T, d, n, dtype, q_scale=q_scale)
    with pytest.raises(AssertionError, match="not close"):
        assert_matches_reference(softmax_in_low_precision, args)
