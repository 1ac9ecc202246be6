"""Every fast depth mix against the reference: forward and every gradient, odd sizes, the
model's memory layouts. Tolerances: float64 1e-12 (pins the math), float32 1e-5 forward and
1e-4 gradients (accumulation order), bfloat16 against the float32 reference 0.1 absolute.

The Triton kernel runs on CUDA when there is a device, and on CPU through Triton's interpreter
(TRITON_INTERPRET=1), which executes the same kernel code with NumPy.
"""

from __future__ import annotations

import os

import pytest
import torch

from depthattn.ops.depth_mix.dispatch import get_depth_mix_impl
from depthattn.ops.depth_mix.reference import depth_mix_reference

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


def make_inputs(B, H, H_kv, T, d, n, dtype, device="cpu", layout="model", seed=0):
    """q (B, H, T, d), n source keys/values, own key/value (B, H_kv, T, d), all leaves.
    layout="model": transposed views of (B, T, heads, d) tensors, as the attention makes them."""
    gen = torch.Generator().manual_seed(seed)

    def rand(heads):
        x = torch.randn(B, T, heads, d, generator=gen, dtype=torch.float64) * 2
        x = x.to(device=device, dtype=dtype)
        if layout == "model":
            return x.requires_grad_().transpose(1, 2)
        return x.transpose(1, 2).contiguous().requires_grad_()

    q = rand(H)
    keys = [rand(H_kv) for _ in range(n)]
    values = [rand(H_kv) for _ in range(n)]
    return q, keys, values, rand(H_kv), rand(H_kv)


def mix_and_grads(fn, args, grad_out):
    q, keys, values, key, value = args
    inputs = [q, *keys, *values, key, value]
    out = fn(q, keys, values, key, value)
    return out, torch.autograd.grad(out, inputs, grad_out)


def assert_matches_reference(fn, args, atol, grad_atol, seed=1):
    out_shape = args[4].shape
    grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64).to(device=args[4].device, dtype=args[4].dtype)
    want, want_grads = mix_and_grads(depth_mix_reference, args, grad_out)
    got, got_grads = mix_and_grads(fn, args, grad_out)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    names = ["q", *[f"k{j}" for j in range(len(args[1]))], *[f"v{j}" for j in range(len(args[2]))],
             "key", "value"]
    for name, g, w in zip(names, got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=grad_atol, rtol=0, msg=f"grad of {name}")


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
    assert_matches_reference(mix_named(name, request), args, atol=1e-5, grad_atol=1e-4)


@pytest.mark.parametrize("name", ["unstacked", "inference", "recompute"])
@pytest.mark.parametrize("H, H_kv, T, d, n", SHAPES)
def test_float64_matches_reference_exactly(name, H, H_kv, T, d, n):
    args = make_inputs(2, H, H_kv, T, d, n, torch.float64)
    assert_matches_reference(get_depth_mix_impl(name), args, atol=1e-12, grad_atol=1e-11)


@pytest.mark.parametrize("name", FAST)
def test_bfloat16_stays_close_to_the_float32_reference(name, request):
    device = "cuda" if name == "triton" and HAS_CUDA else "cpu"
    args = make_inputs(1, 8, 2, 9, 64, 2, torch.bfloat16, device)
    as_float = [args[0].float(), [k.float() for k in args[1]], [v.float() for v in args[2]],
                args[3].float(), args[4].float()]
    got = mix_named(name, request)(*args)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), depth_mix_reference(*as_float), atol=0.1, rtol=0.02)
    grad_out = torch.ones_like(got)
    grads = torch.autograd.grad(got, [args[0], args[1][0], args[4]], grad_out)
    want = torch.autograd.grad(depth_mix_reference(*as_float), [as_float[0], as_float[1][0],
                                                                as_float[4]], grad_out.float())
    for g, w in zip(grads, want):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w, atol=0.1, rtol=0.05)


def test_triton_sources_with_different_layouts_are_read_correctly(triton_mix):
    """A source whose strides differ from the layer's own tensors is copied, not misread."""
    device = "cuda" if HAS_CUDA else "cpu"
    q, keys, values, key, value = make_inputs(2, 4, 2, 7, 16, 2, torch.float32, device)
    keys[1] = keys[1].detach().contiguous().requires_grad_()  # contiguous among transposed views
    assert_matches_reference(triton_mix, (q, keys, values, key, value), atol=1e-5, grad_atol=1e-4)


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
        assert_matches_reference(fn, args, atol=1e-5, grad_atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_triton_on_cuda_at_model_scale(triton_mix, dtype, atol):
    """Realistic sizes on the GPU: head dim 128, a long sequence, 4 sources."""
    args = make_inputs(2, 16, 8, 1000, 128, 4, dtype, "cuda")
    assert_matches_reference(triton_mix, args, atol=atol, grad_atol=atol * 4)

