"""The Triton depth mix against the reference in float64: forward and every gradient, odd sizes
(T = 63), the model's memory layouts and others; tolerances in compare.py.

It runs on CUDA when there is a device, and on CPU through Triton's interpreter
(TRITON_INTERPRET=1, set by tests/conftest.py), which executes the same kernel code with NumPy.
"auto" never takes this kernel, so the tests marked ``gpu`` (run by benchmarks/gpu_check.sh) are
where it is checked on the device that will run it, in every dtype it takes.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.ops.depth_mix.compare import (
    LOW_PRECISION,
    SHAPES,
    SHARPNESS,
    assert_matches_reference,
    make_inputs,
)

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(scope="module")
def triton_mix():
    """The Triton depth mix; tests/conftest.py turns the interpreter on without a CUDA device."""
    pytest.importorskip("triton")
    if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and Triton's interpreter is off")
    from depthattn.ops.depth_mix.triton_kernel import depth_mix_triton

    return depth_mix_triton


@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
@pytest.mark.parametrize("layout", ["model", "contiguous"])
def test_float32_matches_reference(triton_mix, H, H_kv, T, d, n, layout):
    args = make_inputs(2, H, H_kv, T, d, n, torch.float32, DEVICE, layout)
    assert_matches_reference(triton_mix, args)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
@pytest.mark.parametrize("q_scale", SHARPNESS)
def test_low_precision_rounds_only_the_result(triton_mix, dtype, H, H_kv, T, d, n, q_scale):
    """Computed in float32 and rounded once: within one ulp of the exact mix, every gradient too."""
    args = make_inputs(2, H, H_kv, T, d, n, dtype, DEVICE, q_scale=q_scale)
    assert_matches_reference(triton_mix, args)


def test_sources_with_different_layouts_are_read_correctly(triton_mix):
    """A source whose strides differ from the layer's own tensors is copied, not misread."""
    q, keys, values, key, value = make_inputs(2, 4, 2, 7, 16, 2, torch.float32, DEVICE)
    keys[1] = keys[1].detach().contiguous().requires_grad_()  # contiguous among transposed views
    assert_matches_reference(triton_mix, (q, keys, values, key, value))


def test_a_value_with_gaps_is_copied_instead_of_written_past(triton_mix):
    """ṽ and the gradients are written into buffers of their inputs' layouts, which only dense
    tensors keep: a value sliced from a wider tensor is copied first, not written past its end."""
    q, keys, values, key, _ = make_inputs(1, 4, 2, 5, 8, 1, torch.float32, DEVICE)
    wide = torch.randn(1, 2, 5, 16, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    value = wide.requires_grad_()[..., :8]  # strides (160, 80, 16, 1): gaps between rows
    assert_matches_reference(triton_mix, (q, keys, values, key, value))


def test_a_strided_head_dimension_is_refused(triton_mix):
    q, keys, values, key, value = make_inputs(1, 4, 2, 3, 8, 1, torch.float32, DEVICE)
    strided = torch.randn(1, 2, 3, 16, device=value.device)[..., ::2]  # head-dim stride 2
    with pytest.raises(ValueError, match="unit stride in the head dimension"):
        triton_mix(q, keys, values, key, strided)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, H, H_kv, T, d, n", [
    (2, 4, 2, 37, 64, 2),  # at d = 64 a program takes 32 tokens: T = 37 masks most of the second
    (2, 16, 8, 1000, 128, 4),  # model scale: head dim 128, a long sequence, 4 sources
])
def test_on_cuda_matches_the_float64_reference(triton_mix, dtype, B, H, H_kv, T, d, n):
    """The kernel as compiled for this GPU by this Triton, forward and every gradient."""
    assert_matches_reference(triton_mix, make_inputs(B, H, H_kv, T, d, n, dtype, "cuda"))
