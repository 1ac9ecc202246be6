"""The depth mix (docs/method.md §3) against a hand-written loop over batch, kv head, token and source.

The yardstick below uses Python floats (float64) and explicit loops, no torch ops, so it shares
nothing with the implementation beyond the equations:

    q̄_g   = (1/G) Σ_{h = gG .. gG+G−1} q_h
    a_j   = q̄_g · k_j,g / √d   (sources in the given order, the layer itself last)
    α     = softmax(a)
    ṽ_l,g = Σ_j α_j ṽ_j,g + α_l v_l,g
"""

from __future__ import annotations

import math

import pytest
import torch

from depthattn.ops.depth_mix import depth_mix
from depthattn.ops.depth_mix.reference import depth_mix_reference

MIX_FUNCTIONS = [  # the reference, and the public function with impl="auto"
    pytest.param(depth_mix_reference, id="reference"),
    pytest.param(depth_mix, id="auto"),
]


def loop_depth_mix(q, source_keys, source_values, key, value):
    """Returns (ṽ, α) as float64 tensors of shapes (B, H_kv, T, d) and (B, H_kv, T, n+1)."""
    B, H, T, d = q.shape
    H_kv = key.shape[1]
    G = H // H_kv
    qf = q.double().tolist()
    keys = [k.double().tolist() for k in source_keys] + [key.double().tolist()]
    values = [v.double().tolist() for v in source_values] + [value.double().tolist()]
    n1 = len(keys)
    out = [[[[0.0] * d for _ in range(T)] for _ in range(H_kv)] for _ in range(B)]
    alpha = [[[[0.0] * n1 for _ in range(T)] for _ in range(H_kv)] for _ in range(B)]
    for b in range(B):
        for g in range(H_kv):
            for t in range(T):
                q_bar = [sum(qf[b][h][t][i] for h in range(g * G, g * G + G)) / G for i in range(d)]
                scores = [
                    sum(q_bar[i] * keys[j][b][g][t][i] for i in range(d)) / math.sqrt(d)
                    for j in range(n1)
                ]
                top = max(scores)
                exps = [math.exp(s - top) for s in scores]
                total = sum(exps)
                weights = [e / total for e in exps]
                alpha[b][g][t] = weights
                for i in range(d):
                    out[b][g][t][i] = sum(weights[j] * values[j][b][g][t][i] for j in range(n1))
    return torch.tensor(out, dtype=torch.float64), torch.tensor(alpha, dtype=torch.float64)


def make_inputs(B, H, H_kv, T, d, n, dtype=torch.float64, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    q = r(B, H, T, d)
    source_keys = [r(B, H_kv, T, d) for _ in range(n)]
    # values are not scaled: only the scores should be large in the bf16 test
    source_values = [torch.randn(B, H_kv, T, d, generator=gen, dtype=torch.float64).to(dtype)
                     for _ in range(n)]
    key = r(B, H_kv, T, d)
    value = torch.randn(B, H_kv, T, d, generator=gen, dtype=torch.float64).to(dtype)
    return q, source_keys, source_values, key, value


@pytest.mark.parametrize("fn", MIX_FUNCTIONS)
@pytest.mark.parametrize("H, H_kv", [(4, 4), (4, 2), (8, 2)], ids=["G1", "G2", "G4"])
@pytest.mark.parametrize("n", [0, 1, 3])
def test_matches_loop_formula_float64(fn, H, H_kv, n):
    q, sk, sv, k, v = make_inputs(B=2, H=H, H_kv=H_kv, T=7, d=8, n=n, seed=10 * n + H_kv)
    expected_out, expected_alpha = loop_depth_mix(q, sk, sv, k, v)
    out = fn(q, sk, sv, k, v)
    assert out.dtype == torch.float64
    assert out.shape == (2, H_kv, 7, 8)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("H, H_kv", [(4, 4), (4, 2), (8, 2)], ids=["G1", "G2", "G4"])
@pytest.mark.parametrize("n", [0, 1, 3])
def test_weights_match_loop_formula_and_sum_to_one(H, H_kv, n):
    q, sk, sv, k, v = make_inputs(B=2, H=H, H_kv=H_kv, T=7, d=8, n=n, seed=7 + n)
    expected_out, expected_alpha = loop_depth_mix(q, sk, sv, k, v)
    out, alpha = depth_mix_reference(q, sk, sv, k, v, return_weights=True)
    assert alpha.shape == (2, H_kv, 7, n + 1)
    torch.testing.assert_close(alpha.double(), expected_alpha, rtol=0, atol=1e-12)
    torch.testing.assert_close(alpha.double().sum(-1), torch.ones(2, H_kv, 7, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)


def test_no_sources_returns_the_value_with_weight_one():
    q, _, _, k, v = make_inputs(B=2, H=4, H_kv=2, T=5, d=8, n=0, dtype=torch.float32)
    out, alpha = depth_mix_reference(q, [], [], k, v, return_weights=True)
    assert torch.equal(alpha, torch.ones_like(alpha))
    torch.testing.assert_close(out, v, rtol=0, atol=0)


def test_self_weight_is_last():
    """Make the layer's own key agree with q̄ and the sources' keys oppose it: α_self → 1."""
    B, H, H_kv, T, d = 1, 4, 2, 3, 8
    q, sk, sv, k, v = make_inputs(B, H, H_kv, T, d, n=2, dtype=torch.float64, seed=3)
    q_bar = q.unflatten(1, (H_kv, H // H_kv)).mean(2)  # (B, H_kv, T, d)
    direction = q_bar / q_bar.norm(dim=-1, keepdim=True)
    key = 20.0 * direction
    source_keys = [-20.0 * direction, -20.0 * direction]
    out, alpha = depth_mix_reference(q, source_keys, sv, key, v, return_weights=True)
    assert (alpha[..., -1] > 0.999).all()
    assert (alpha[..., :-1] < 1e-3).all()
    torch.testing.assert_close(out, v, rtol=0, atol=1e-2)
    # and the other way round: the first source wins when its key agrees with q̄
    out, alpha = depth_mix_reference(q, [key, source_keys[1]], sv, source_keys[0], v,
                                     return_weights=True)
    assert (alpha[..., 0] > 0.999).all()
    torch.testing.assert_close(out, sv[0], rtol=0, atol=1e-2)


def test_group_is_consecutive_query_heads():
    """kv head g is queried by heads gG..gG+G−1 (as in repeat_kv), not by heads g, g+H_kv, ..."""
    B, H, H_kv, T, d = 1, 4, 2, 1, 4
    q = torch.zeros(B, H, T, d, dtype=torch.float64)
    q[0, 0:2, 0, 0] = 30.0  # group 0 (heads 0, 1) looks along e0
    q[0, 2:4, 0, 1] = 30.0  # group 1 (heads 2, 3) looks along e1
    e0 = torch.zeros(B, H_kv, T, d, dtype=torch.float64)
    e0[..., 0] = 1.0
    e1 = torch.zeros_like(e0)
    e1[..., 1] = 1.0
    src_v = torch.full((B, H_kv, T, d), 5.0, dtype=torch.float64)
    self_v = torch.full((B, H_kv, T, d), -5.0, dtype=torch.float64)
    out = depth_mix_reference(q, [e0], [src_v], e1, self_v)
    # group 0 prefers the source (key e0), group 1 its own value (key e1)
    assert (out[0, 0] > 4.9).all() and (out[0, 1] < -4.9).all()


def test_invariant_to_a_common_rotation_of_queries_and_keys():
    """docs/method.md §3: all tensors share the token position, so RoPE's rotation cancels in the scores.
    Any orthogonal map applied to q and to every key alike leaves ṽ unchanged."""
    B, H, H_kv, T, d = 2, 4, 2, 5, 8
    q, sk, sv, k, v = make_inputs(B, H, H_kv, T, d, n=2, seed=11)
    gen = torch.Generator().manual_seed(5)
    rot = torch.linalg.qr(torch.randn(T, d, d, generator=gen, dtype=torch.float64))[0]  # per t

    def turn(x):
        return torch.einsum("bhtd,ted->bhte", x, rot)

    base = depth_mix_reference(q, sk, sv, k, v)
    turned = depth_mix_reference(turn(q), [turn(x) for x in sk], sv, turn(k), v)
    torch.testing.assert_close(turned, base, rtol=0, atol=1e-12)
    # but rotating only the keys does change it: the test can fail
    keys_only = depth_mix_reference(q, [turn(x) for x in sk], sv, turn(k), v)
    assert (keys_only - base).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_dtype_is_value_dtype(dtype):
    q, sk, sv, k, v = make_inputs(B=1, H=4, H_kv=2, T=3, d=8, n=2, dtype=dtype)
    out = depth_mix_reference(q, sk, sv, k, v)
    assert out.dtype == dtype
    out = depth_mix(q, sk, sv, k, v)
    assert out.dtype == dtype


@pytest.mark.parametrize("fn", MIX_FUNCTIONS)
def test_bfloat16_scores_and_softmax_in_float32(fn):
    """bf16 inputs with large scores (std ≈ 9): rounding the scores to bf16 (spacing 1/16 at
    |a| ≈ 10) would move the weights by several percent; the float32 formula on the same
    bf16 inputs differs from a correct result only by the final bf16 rounding of ṽ."""
    q, sk, sv, k, v = make_inputs(B=2, H=8, H_kv=2, T=7, d=16, n=3, dtype=torch.bfloat16,
                                  seed=1, scale=3.0)
    expected_out, expected_alpha = loop_depth_mix(q.float(), [x.float() for x in sk],
                                                  [x.float() for x in sv], k.float(), v.float())
    out = fn(q, sk, sv, k, v)
    assert out.dtype == torch.bfloat16
    # |ṽ| ≲ 4, bf16 keeps 8 bits: ≤ 4 · 2^-9 ≈ 0.008 from the final rounding
    torch.testing.assert_close(out.double(), expected_out, rtol=0, atol=1.5e-2)
    _, alpha = depth_mix_reference(q, sk, sv, k, v, return_weights=True)
    torch.testing.assert_close(alpha.double(), expected_alpha, rtol=0, atol=5e-3)


def test_bfloat16_test_would_catch_bfloat16_scores():
    """The check above must be able to fail: computing the scores in bf16 breaks it."""
    q, sk, sv, k, v = make_inputs(B=2, H=8, H_kv=2, T=7, d=16, n=3, dtype=torch.bfloat16,
                                  seed=1, scale=3.0)
    expected_out, expected_alpha = loop_depth_mix(q.float(), [x.float() for x in sk],
                                                  [x.float() for x in sv], k.float(), v.float())
    q_bar = q.unflatten(1, (2, 4)).mean(2)  # bf16
    keys = torch.stack([*sk, k], dim=-2)
    scores = (torch.einsum("bgtd,bgtnd->bgtn", q_bar, keys) / 4.0).to(torch.bfloat16)
    alpha_bf16 = torch.softmax(scores.float(), dim=-1)
    assert (alpha_bf16.double() - expected_alpha).abs().max() > 5e-3


def test_gradcheck_float64():
    """Gradients reach q, every source key and value, and the layer's own key and value."""
    q, sk, sv, k, v = make_inputs(B=1, H=4, H_kv=2, T=3, d=4, n=2, seed=2)
    inputs = [x.clone().requires_grad_(True) for x in (q, *sk, *sv, k, v)]

    def f(q, sk0, sk1, sv0, sv1, k, v):
        return depth_mix_reference(q, [sk0, sk1], [sv0, sv1], k, v)

    assert torch.autograd.gradcheck(f, tuple(inputs), eps=1e-6, atol=1e-8)
    out = f(*inputs)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)).sum().backward()
    for name, x in zip(["q", "sk0", "sk1", "sv0", "sv1", "k", "v"], inputs):
        assert x.grad is not None and x.grad.abs().max() > 1e-6, name


def test_gradcheck_float64_auto_and_gqa4():
    q, sk, sv, k, v = make_inputs(B=1, H=8, H_kv=2, T=2, d=4, n=1, seed=4)
    inputs = tuple(x.clone().requires_grad_(True) for x in (q, *sk, *sv, k, v))

    def f(q, sk0, sv0, k, v):
        return depth_mix(q, [sk0], [sv0], k, v)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8)
