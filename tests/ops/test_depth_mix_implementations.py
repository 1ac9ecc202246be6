"""Every fast depth mix against the reference: forward and every gradient, odd sizes, the
model's memory layouts. The yardstick is the reference computed in float64 from the same inputs;
the tolerances, per dtype, are those of ``depthattn.ops.depth_mix.tolerances`` (float64 1e-12,
float32 1e-5 / 1e-4 gradients, bfloat16 and float16 one unit in the last place), which the
dispatcher's self-check reads too. A broken variant, the reference with its softmax in bfloat16
(or float16), must fail them.

The Triton kernel runs on CUDA when there is a device, and on CPU through Triton's interpreter
(TRITON_INTERPRET=1), which executes the same kernel code with NumPy.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from depthattn.ops.depth_mix.dispatch import get_depth_mix_impl
from depthattn.ops.depth_mix.reference import depth_mix_reference
from depthattn.ops.depth_mix.tolerances import TOLERANCES, Tolerance

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def triton_mix():
    """The Triton depth mix; conftest turns the interpreter on when there is no CUDA device."""
    pytest.importorskip("triton")
    if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and Triton's interpreter is off")
    from depthattn.ops.depth_mix.triton_kernel import depth_mix_triton
    return depth_mix_triton


def mix_named(name, request):
    return request.getfixturevalue("triton_mix") if name == "triton" else get_depth_mix_impl(name)


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


def assert_matches_reference(fn, args, tolerance: Tolerance, seed=1):
    """fn's ṽ and every gradient against the reference in float64 from the same inputs and the
    same output gradient, within ``tolerance``; dtypes and shapes as the inputs'."""
    dtype = args[4].dtype
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
    the inputs' dtype (bfloat16, float16) instead of float32 (docs/method.md §3, eq. 3)."""
    H, H_kv, d = q.shape[1], key.shape[1], q.shape[-1]
    q_bar = q.unflatten(1, (H_kv, H // H_kv)).mean(dim=2)  # (B, H_kv, T, d)
    keys = torch.stack([*source_keys, key], dim=-2)  # (B, H_kv, T, n+1, d)
    values = torch.stack([*source_values, value], dim=-2)
    alpha = torch.softmax(torch.einsum("bgtd,bgtnd->bgtn", q_bar, keys) / math.sqrt(d), dim=-1)
    return torch.einsum("bgtn,bgtnd->bgtd", alpha, values)


SHAPES = [  # H, H_kv, T, d, n: groups of 1, 2 and 4; odd T; one token (decoding);
    # d not a power of two; 0 sources
    (4, 4, 63, 16, 1),
    (4, 1, 1, 64, 2),
    (4, 2, 63, 12, 3),
    (8, 2, 17, 16, 0),
    (8, 2, 5, 32, 2),
]
FAST = ["unstacked", "inference", "recompute", "triton"]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
@pytest.mark.parametrize("layout", ["model", "contiguous"])
def test_float32_matches_reference(name, H, H_kv, T, d, n, layout, request):
    device = "cuda" if name == "triton" and HAS_CUDA else "cpu"
    args = make_inputs(2, H, H_kv, T, d, n, torch.float32, device, layout)
    assert_matches_reference(mix_named(name, request), args, TOLERANCES[torch.float32])


@pytest.mark.parametrize("name", ["unstacked", "inference", "recompute"])
@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
def test_float64_matches_reference_exactly(name, H, H_kv, T, d, n):
    args = make_inputs(2, H, H_kv, T, d, n, torch.float64)
    assert_matches_reference(get_depth_mix_impl(name), args, TOLERANCES[torch.float64])


LOW_PRECISION = [torch.bfloat16, torch.float16]
SHARPNESS = [1.0, 4.0]  # q_scale: scores of standard deviation ~2 and ~8


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
@pytest.mark.parametrize("q_scale", SHARPNESS)
def test_low_precision_rounds_only_the_result(dtype, name, H, H_kv, T, d, n, q_scale, request):
    """Computed in float32 and rounded once: within one ulp of the exact mix, every gradient too."""
    device = "cuda" if name == "triton" and HAS_CUDA else "cpu"
    args = make_inputs(2, H, H_kv, T, d, n, dtype, device, q_scale=q_scale)
    assert_matches_reference(mix_named(name, request), args, TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("H, H_kv, T, d, n", [s for s in SHAPES if s[-1] > 0])
@pytest.mark.parametrize("q_scale", SHARPNESS)
def test_a_softmax_in_low_precision_fails_the_tolerance(dtype, H, H_kv, T, d, n, q_scale):
    """The tolerance every fast path meets above rejects the broken variant on every shape with
    a source (with none, α = 1 and the variant is exact)."""
    args = make_inputs(2, H, H_kv, T, d, n, dtype, q_scale=q_scale)
    with pytest.raises(AssertionError, match="not close"):
        assert_matches_reference(softmax_in_low_precision, args, TOLERANCES[dtype])


def test_triton_sources_with_different_layouts_are_read_correctly(triton_mix):
    """A source whose strides differ from the layer's own tensors is copied, not misread."""
    device = "cuda" if HAS_CUDA else "cpu"
    q, keys, values, key, value = make_inputs(2, 4, 2, 7, 16, 2, torch.float32, device)
    keys[1] = keys[1].detach().contiguous().requires_grad_()  # contiguous among transposed views
    assert_matches_reference(triton_mix, (q, keys, values, key, value), TOLERANCES[torch.float32])


def test_triton_copies_a_value_with_gaps_instead_of_writing_past_it(triton_mix):
    """ṽ and the gradients are written into buffers of their inputs' layouts, which only dense
    tensors keep: a value sliced from a wider tensor is copied first (it once ran out of bounds)."""
    device = "cuda" if HAS_CUDA else "cpu"
    q, keys, values, key, _ = make_inputs(1, 4, 2, 5, 8, 1, torch.float32, device)
    wide = torch.randn(1, 2, 5, 16, generator=torch.Generator().manual_seed(3)).to(device)
    value = wide.requires_grad_()[..., :8]  # strides (160, 80, 16, 1): gaps between rows
    assert_matches_reference(triton_mix, (q, keys, values, key, value), TOLERANCES[torch.float32])


def test_triton_refuses_a_strided_head_dimension(triton_mix):
    q, keys, values, key, value = make_inputs(1, 4, 2, 3, 8, 1, torch.float32,
                                              "cuda" if HAS_CUDA else "cpu")
    strided = torch.randn(1, 2, 3, 16, device=value.device)[..., ::2]  # head-dim stride 2
    with pytest.raises(ValueError, match="unit stride in the head dimension"):
        triton_mix(q, keys, values, key, strided)


def test_recompute_keeps_only_one_value_per_token_for_backward():
    """Beyond tensors alive anyway (q, keys, values), backward keeps (B, H_kv, T) floats."""
    B, H, H_kv, T, d, n = 2, 8, 2, 11, 16, 3
    args = make_inputs(B, H, H_kv, T, d, n, torch.float32)
    alive = {t.data_ptr() for t in [args[0], *args[1], *args[2], args[3], args[4]]}
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        get_depth_mix_impl("recompute")(*args)
    extra = sum(t.numel() for t in saved if t.data_ptr() not in alive)
    assert extra == B * H_kv * T


def test_compiled_matches_reference_across_shapes():
    """One test: compiling is slow on CPU. Two shapes exercise the recompile."""
    fn = get_depth_mix_impl("compiled")
    for T, n in [(9, 2), (13, 1)]:
        args = make_inputs(2, 4, 2, T, 16, n, torch.float32)
        assert_matches_reference(fn, args, TOLERANCES[torch.float32])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_on_cuda_at_model_scale(triton_mix, dtype):
    """Realistic sizes on the GPU: head dim 128, a long sequence, 4 sources."""
    args = make_inputs(2, 16, 8, 1000, 128, 4, dtype, "cuda")
    assert_matches_reference(triton_mix, args, TOLERANCES[dtype])

