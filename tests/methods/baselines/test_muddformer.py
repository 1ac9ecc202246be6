"""MUDDFormer (docs/baselines.md §8): the dense mix and its hand-written backward, the weight-MLP
widths, parameter counts, the 3B numbers, options, and the model against the equations. The
shared battery (test_every_method.py) covers decoding, padding, save/load, names, activation
checkpointing, cost() against the real count and the model being vanilla at init."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from depthattn import CausalLM, ModelConfig
from depthattn.methods import method_names
from depthattn.methods.base import AttentionInput, ForwardContext
from depthattn.methods.baselines.muddformer import (
    MUDDFormer,
    MUDDFormerOptions,
    dense_mix,
    hidden_width,
)
from tests.conftest import random_ids, tiny_config, tiny_model


def closed_form_params(L: int, d: int, e: int = 1, e_last: int = 4) -> int:
    """Σ_{i=1..L} [d·H_i + H_i·C_i(i+1) + C_i(i+1)] + 2d(L−1), H_i = 64(⌊C_i(i+1)e/64⌋ + 1)."""
    total = 2 * d * (L - 1)
    for i in range(1, L + 1):
        C, expand = (4, e) if i < L else (1, e_last)
        H = 64 * (C * (i + 1) * expand // 64 + 1)
        total += d * H + H * C * (i + 1) + C * (i + 1)
    return total


def test_registered():
    assert "muddformer" in method_names()


def test_dense_mix_matches_the_sum_and_its_gradients():
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    sources = [torch.randn(2, 3, 7, dtype=torch.float64, generator=gen, requires_grad=True)
               for _ in range(5)]
    expected = torch.stack([sum(weights[..., c, j, None] * sources[j] for j in range(5))
                            for c in range(4)], dim=-2)
    torch.testing.assert_close(dense_mix(weights, tuple(sources)), expected)
    assert torch.autograd.gradcheck(lambda w, *s: dense_mix(w, s), (weights, *sources))


def test_dense_mix_keeps_the_sources_dtype_under_autocast():
    weights = torch.randn(1, 2, 4, 3)
    sources = tuple(torch.randn(1, 2, 8) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dense_mix(weights, sources).dtype == torch.float32


def test_hidden_widths_round_up_by_at_least_64():
    options = MUDDFormerOptions()
    assert hidden_width(1, 48, options) == 64  # C(i+1) = 8
    assert hidden_width(15, 48, options) == 128  # 64 outputs: rounds *up* to 128
    assert hidden_width(47, 48, options) == 256  # 192 outputs
    assert hidden_width(48, 48, options) == 256  # last layer: 1 stream × 49 sources × 4 = 196


@pytest.mark.parametrize("overrides", [{}, {"hidden_expand": 2, "last_hidden_expand": 1}])
def test_parameter_count_matches_the_closed_form(overrides):
    config = tiny_config()
    options = MUDDFormerOptions(**overrides).resolved(config)
    module = MUDDFormer(config, options)
    expected = closed_form_params(config.num_layers, config.hidden_size,
                                  options.hidden_expand, options.last_hidden_expand)
    assert sum(p.numel() for p in module.parameters()) == expected
    assert MUDDFormer.cost(config, options).added_params == expected


def test_init_is_current_only():
    """W2 = 0 and b = [0, …, 0, 1] for every stream ⇒ every stream is the latest output."""
    module = MUDDFormer(tiny_config(), MUDDFormerOptions())
    x = torch.randn(2, 3, 64)
    for l, layer in enumerate(module.layers):
        weights = layer.weights(x)
        expected = torch.zeros_like(weights)
        expected[..., -1] = 1.0
        assert weights.shape == (2, 3, 4 if l < 5 else 1, l + 2)
        torch.testing.assert_close(weights, expected, atol=0, rtol=0)
        assert layer.w1.std().item() == pytest.approx(64 ** -0.5, rel=0.1)  # N(0, 1/d)


def test_3b_geometry_numbers():
    """docs/baselines.md §3/§8: ≈ 14.3 M added parameters; (L+1)·d + 4d in-flight state."""
    config = ModelConfig.from_preset("3b")
    cost = MUDDFormer.cost(config, MUDDFormerOptions())
    assert cost.added_params == closed_form_params(48, 2048) == 14_336_653
    assert round(cost.added_params / 1e6, 1) == 14.3
    assert cost.inflight_state_per_token == 49 * 2048 + 4 * 2048
    assert cost.persistent_state_per_token == 0


@pytest.mark.parametrize("option, value, message", [
    ("hidden_expand", 0, r"muddformer option hidden_expand \(0\) must be an integer >= 1"),
    ("hidden_expand", 1.5, r"hidden_expand \(1\.5\) must be an integer >= 1"),
    ("last_hidden_expand", False, r"last_hidden_expand \(False\) must be an integer >= 1"),
])
def test_invalid_options_are_refused(option, value, message):
    with pytest.raises(ValueError, match=message):
        MUDDFormerOptions(**{option: value}).resolved(tiny_config())


def test_defaults_are_the_paper_settings():
    assert (MUDDFormerOptions().hidden_expand, MUDDFormerOptions().last_hidden_expand) == (1, 4)


# --- the model with MUDDFormer ----------------------------------------------------------------
def reference_forward(model: CausalLM, ids: torch.Tensor) -> torch.Tensor:
    """§8 written out with the model's own weights: streams as explicit sums over sources."""
    dec, method = model.model, model.model.cross_layer
    B, T = ids.shape
    L, eps = model.config.num_layers, model.config.rms_norm_eps
    x = dec.embed_tokens(ids)
    cos, sin = dec.rotary_emb(x, torch.arange(T).expand(B, T))
    ctx = ForwardContext(cos=cos, sin=sin, attn_mask=None, is_causal=True,
                         applications=dec.applications)
    sources, Q, K, V, R = [x], x, x, x, x
    for l, block in enumerate(dec.layers):
        conn = method.layers[l]
        q_in = block.input_layernorm(Q)
        k_in = conn.k_norm(K) if l > 0 else q_in
        v_in = conn.v_norm(V) if l > 0 else q_in
        A = R + block.self_attn(AttentionInput(q_in, k_in, v_in), method, ctx)[0]
        X = A + block.mlp(block.post_attention_layernorm(A))
        sources.append(X)
        normed = X * torch.rsqrt(X.pow(2).mean(-1, keepdim=True) + eps)
        C, J = (4 if l < L - 1 else 1), l + 2
        a = (F.gelu(normed @ conn.w1.T) @ conn.w2.T + conn.bias).view(B, T, C, J)
        streams = [sum(a[..., c, j, None] * sources[j] for j in range(J)) for c in range(C)]
        Q, K, V, R = streams if C == 4 else (None, None, None, streams[0])
    return model.lm_head(dec.norm(R))


def test_matches_the_equations_written_out():
    model = tiny_model(seed=3, method="muddformer")
    ids = random_ids(2, 9, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference_forward(model, ids), atol=1e-5,
                                   rtol=1e-5)


def test_backward_reaches_every_weight_mlp_parameter():
    """Non-zero gradients for every MUDDFormer parameter (the battery asks only for finite ones;
    its cost() check with the closed-form test above pins the parameter count in the model)."""
    model = tiny_model(seed=5, method="muddformer").train()
    ids = random_ids(2, 9, seed=5)
    logits = model(ids)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in model.model.cross_layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_keys_and_values_read_their_own_streams():
    """Changing a later layer's key (or value) pre-norm changes the output; layer 1 has none."""
    model = tiny_model(seed=6, method="muddformer")
    ids = random_ids(1, 6, seed=6)
    assert not hasattr(model.model.cross_layer.layers[0], "k_norm")
    with torch.no_grad():
        before = model(ids)
        for norm in ("k_norm", "v_norm"):
            gain = getattr(model.model.cross_layer.layers[2], norm).weight
            saved = gain.clone()
            gain.mul_(torch.linspace(0.5, 2.0, gain.numel()))  # not uniform: k_norm would undo that
            assert not torch.allclose(model(ids), before)
            gain.copy_(saved)

