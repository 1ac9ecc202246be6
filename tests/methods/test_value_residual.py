"""Value residual / ResFormer (docs/baselines.md §9): the mix itself, its limits (λ = 0 is vanilla,
λ = 1 shares layer 0's values), the shared 0.5 start of all modes, accounting, options."""

from __future__ import annotations

import pytest
import torch

from depthattn import CausalLM, KVCache, ModelConfig
from depthattn.methods import get_method, method_options
from depthattn.methods.base import ForwardContext
from tests.conftest import random_ids, tiny_config, tiny_model
from tests.methods.sublayers import assert_decoding_matches_full_forward

MODES = ["fixed", "learned", "gated"]
KV_PER_TOKEN_3B = 2 * 48 * 8 * 64  # 49 152


def copy_backbone(model: CausalLM, method: str = "vanilla", **options) -> CausalLM:
    other = CausalLM(tiny_config(method=method, method_options=options)).to(
        next(model.parameters()).dtype)
    missing, unexpected = other.load_state_dict(model.state_dict(), strict=False)
    assert not [k for k in missing if not k.startswith("model.cross_layer.")]
    return other.eval()


def test_mix_is_a_lerp_toward_layer_0s_value():
    model = tiny_model(seed=1, method="value_residual", method_options={"mode": "learned"})
    method = model.model.cross_layer
    with torch.no_grad():
        method.lambdas.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    ctx = ForwardContext(cos=None, sin=None, attn_mask=None, is_causal=True,
                         applications=model.model.applications)
    stash = ctx.depth_stash
    q = torch.randn(2, 4, 3, 16)
    k, v0, v2 = (torch.randn(2, 2, 3, 16) for _ in range(3))
    assert method.mix_values(0, q, k, v0, ctx) is v0  # layer 0 unchanged, stashed
    assert stash[0].value is v0
    with torch.no_grad():
        mixed = method.mix_values(2, q, k, v2, ctx)
    torch.testing.assert_close(mixed, 0.8 * v2 + 0.2 * v0)  # λ_2 = lambdas[1]


@pytest.mark.parametrize("mode", ["learned", "gated"])
def test_modes_with_parameters_refuse_split_heads(mode):
    """Under tensor parallelism a rank's attention computes H_kv / tp heads: the gates' λ (for
    all H_kv) would broadcast over them, and a learned λ's gradient would cover them only."""
    model = tiny_model(seed=1, method="value_residual", method_options={"mode": mode})
    method = model.model.cross_layer
    ctx = ForwardContext(cos=None, sin=None, attn_mask=None, is_causal=True,
                         applications=model.model.applications)
    q, k, v = torch.randn(2, 2, 3, 16), torch.randn(2, 1, 3, 16), torch.randn(2, 1, 3, 16)
    method.mix_values(0, q, k, v, ctx)
    method.read(torch.randn(2, 3, 64), 1, "attn", ctx)  # gated: λ_1 for both kv heads
    with pytest.raises(ValueError, match=rf"mode '{mode}' cannot run .* computes 1 of the 2"):
        method.mix_values(1, q, k, v, ctx)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_starts_at_one_half(mode):
    """§9: ResFormer mixes 0.5/0.5; λ starts at 0.5 (learned) and σ(0) = 0.5 (zero gate). So
    no mode equals vanilla at initialisation, and all three equal the fixed mix."""
    torch.manual_seed(0)
    model = CausalLM(tiny_config(method="value_residual", method_options={"mode": mode})).eval()
    ids = random_ids(2, 9, seed=2)
    with torch.no_grad():
        logits = model(ids)
        torch.testing.assert_close(logits, copy_backbone(model, "value_residual")(ids),
                                   atol=1e-6, rtol=0)
        assert not torch.allclose(logits, copy_backbone(model)(ids), atol=1e-3)


@pytest.mark.parametrize("mode", ["learned", "gated"])
def test_share_zero_is_exactly_vanilla(mode):
    model = tiny_model(seed=3, method="value_residual", method_options={"mode": mode})
    with torch.no_grad():
        if mode == "learned":
            model.model.cross_layer.lambdas.zero_()
        else:
            for gate in model.model.cross_layer.gates.values():
                gate.bias.fill_(-1e4)  # σ = 0 exactly in float32
        ids = random_ids(2, 9, seed=3)
        torch.testing.assert_close(model(ids), copy_backbone(model)(ids), atol=0, rtol=0)


def test_share_one_uses_only_layer_0s_values():
    """λ = 1 is SVFormer: layers ≥ 1 read v_0, so their v_proj cannot matter — which also shows
    v_0 is layer 0's value of the same tokens, mixed in before the cache (decode == full)."""
    model = tiny_model(seed=4, method="value_residual", method_options={"mode": "learned"})
    ids = random_ids(2, 8, seed=4)
    with torch.no_grad():
        model.model.cross_layer.lambdas.fill_(1.0)
        before = model(ids)
        for layer in model.model.layers[1:]:
            layer.self_attn.v_proj.weight.normal_()
        torch.testing.assert_close(model(ids), before, atol=1e-6, rtol=0)
        cache = KVCache.for_model(model, 2, 8)
        steps = [model(ids[:, :4], cache=cache)] + [model(ids[:, t:t + 1], cache=cache)
                                                    for t in range(4, 8)]
        torch.testing.assert_close(torch.cat(steps, 1), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["learned", "gated"])
def test_modes_beyond_the_default_decode_and_train(mode):
    """The battery runs the default (fixed) mode; the parametrised ones get the same checks."""
    model = tiny_model(seed=5, dtype=torch.float64, method="value_residual",
                       method_options={"mode": mode})
    ids = random_ids(2, 8, seed=5)
    assert_decoding_matches_full_forward(model, ids)
    model.train()
    model(ids).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gated_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=6, method="value_residual",
                           method_options={"mode": "gated"}).train()
        model.model.activation_checkpointing = checkpointing
        model(random_ids(2, 7, seed=6)).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_params_match_module_and_closed_form(mode):
    config = tiny_config(method="value_residual", method_options={"mode": mode})
    L, D, H_kv = config.num_layers, config.hidden_size, config.num_kv_heads
    added = CausalLM(config).num_parameters() - CausalLM(tiny_config()).num_parameters()
    closed = {"fixed": 0, "learned": L - 1, "gated": (L - 1) * (D * H_kv + H_kv)}[mode]  # §9b
    assert added == closed == get_method("value_residual").cost(config,
                                                                     method_options(config)).added_params


@pytest.mark.parametrize("mode,params", [("fixed", 0), ("learned", 47),
                                         ("gated", 47 * (2048 * 8 + 8))])
def test_cost_at_the_3b_geometry(mode, params):
    """§3/§11: d in flight — v_0 is layer 0's own KV-cache entry, as Depth-Attention's sources
    are theirs — 0.04× the KV cache; nothing persists."""
    config = ModelConfig.from_preset("3b", method="value_residual", method_options={"mode": mode})
    cost = get_method("value_residual").cost(config, method_options(config))
    assert cost.added_params == params
    assert cost.inflight_state_per_token == 2048
    assert round(cost.inflight_state_per_token / KV_PER_TOKEN_3B, 2) == 0.04
    assert cost.persistent_state_per_token == 0


def test_invalid_mode_is_refused():
    with pytest.raises(ValueError, match=r"mode \('convex'\).*fixed, learned, gated"):
        tiny_config(method="value_residual", method_options={"mode": "convex"})
