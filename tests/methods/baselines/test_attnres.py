"""AttnRes as compared by the Depth-Attention authors (docs/baselines.md §7A): against a plain
transcription of docs/baselines.md §7A, its (non-vanilla) initial weights, accounting and options."""

from __future__ import annotations

import math

import pytest
import torch

from depthattn import CausalLM, ModelConfig
from depthattn.methods import get_method, method_options
from depthattn.methods.baselines.attnres import (
    DepthAggregator,
    snapshot_layers,
    sources_per_aggregator,
)
from tests.conftest import random_ids, tiny_config, tiny_model
from tests.methods.sublayers import (
    assert_decoding_matches_full_forward,
    sublayer_runner,
)

KV_PER_TOKEN_3B = 2 * 48 * 8 * 64  # 49 152



def aggregate(model: CausalLM, name: str, S: list, P: torch.Tensor) -> torch.Tensor:
    """§7A a: logits ⟨q ⊙ g, s⟩/rms(s), +b on P; softmax; Σ w·(raw values)."""
    agg = model.get_submodule(f"model.cross_layer.{name}")
    eps = model.config.rms_norm_eps
    values = torch.stack([*S, P])  # (n, B, T, D)
    keys = agg.key_gain * values / torch.sqrt(values.pow(2).mean(-1, keepdim=True) + eps)
    logits = keys @ agg.query  # (n, B, T)
    logits[-1] += agg.recency_bias
    return (logits.softmax(0)[..., None] * values).sum(0)


def reference_logits(model: CausalLM, ids: torch.Tensor, block_size: int) -> torch.Tensor:
    h0, attn, mlp, head = sublayer_runner(model, ids)
    S, P, c = [h0], h0, 0
    for layer in range(model.config.num_layers):
        P = P + attn(layer, aggregate(model, f"attn.{layer}", S, P))
        c += 1
        P = P + mlp(layer, aggregate(model, f"mlp.{layer}", S, P))
        c += 1
        if c >= block_size:
            S, c = S + [P], 0
    return head(aggregate(model, "final", S, P))


@pytest.mark.parametrize("block_size", [12, 1, 3, 4])
def test_matches_the_spec(block_size):
    model = tiny_model(seed=21, dtype=torch.float64, method="attnres",
                       method_options={"block_size": block_size})
    ids = random_ids(2, 9, seed=21)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference_logits(model, ids, block_size),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("block_size", [3, 4])
def test_cached_decoding_equals_full_forward_across_snapshots(block_size):
    """The battery's tiny model (6 layers) takes no snapshot at the default 12; here it does."""
    model = tiny_model(seed=22, dtype=torch.float64, method="attnres",
                       method_options={"block_size": block_size})
    ids = random_ids(2, 8, seed=22)
    assert_decoding_matches_full_forward(model, ids)


def test_initial_aggregator_favours_the_running_residual():
    """q = 0 ⇒ weights e^b/(|S| + e^b) on P and 1/(|S| + e^b) on each other source (§7A a)."""
    agg = DepthAggregator(16, 1e-6, recency_bias=3.0).double()
    S = [torch.randn(2, 5, 16, dtype=torch.float64) for _ in range(4)]
    P = torch.randn(2, 5, 16, dtype=torch.float64)
    e3 = math.exp(3.0)
    expected = (sum(S) + e3 * P) / (len(S) + e3)
    torch.testing.assert_close(agg([*S, P], [None] * 5), expected, atol=1e-12, rtol=0)
    h0 = S[0]  # the very first sublayer: S = [h₀] = [P], so it reads h₀ (vanilla)
    torch.testing.assert_close(agg([h0, h0], [None, None]), h0, atol=1e-12, rtol=0)


def test_initial_weight_on_p_at_the_3b_geometry():
    """§7A a: 0.95 in the first block, 0.72 in the last block, 0.69 in the final aggregator —
    so the 48-layer model is not vanilla at init."""
    counts = sources_per_aggregator(48, 12)
    assert snapshot_layers(48, 12) == list(range(5, 48, 6))
    on_p = [math.exp(3) / (n - 1 + math.exp(3)) for n in counts]
    assert round(on_p[0], 2) == 0.95 and round(on_p[-2], 2) == 0.72 and round(on_p[-1], 2) == 0.69
    assert len(snapshot_layers(32, 12)) == 5  # 410M: 5 snapshots + 4 trailing sublayers


def test_fresh_model_is_not_vanilla():
    torch.manual_seed(0)
    model = CausalLM(tiny_config(method="attnres", method_options={"block_size": 2})).eval()
    for name, p in model.named_parameters():
        if name.endswith("query"):
            assert not p.any(), name
        elif name.endswith("recency_bias"):
            assert p.item() == 3.0, name
    vanilla = CausalLM(tiny_config()).eval()
    vanilla.load_state_dict(model.state_dict(), strict=False)
    ids = random_ids(2, 9, seed=1)
    with torch.no_grad():
        assert not torch.allclose(model(ids), vanilla(ids), atol=1e-4)


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=23, method="attnres", method_options={"block_size": 3}).train()
        model.model.activation_checkpointing = checkpointing
        model(random_ids(2, 7, seed=23)).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("L", [1, 6, 7])
def test_params_match_module_and_closed_form(L):
    config = tiny_config(num_layers=L, method="attnres")
    d = config.hidden_size
    added = CausalLM(config).num_parameters() - CausalLM(tiny_config(num_layers=L)).num_parameters()
    cost = get_method("attnres").cost(config, method_options(config))
    assert added == (2 * L + 1) * (2 * d + 1) == cost.added_params  # §7A b


def test_parameter_names():
    keys = {k for k in CausalLM(tiny_config(num_layers=1, method="attnres")).state_dict()
            if k.startswith("model.cross_layer.")}
    assert keys == {f"model.cross_layer.{a}.{p}" for a in ("attn.0", "mlp.0", "final")
                    for p in ("query", "key_gain", "recency_bias")}


def test_cost_at_the_3b_geometry():
    """§3: 397 409 params; h₀ and 8 snapshots, each with its 1/rms, in flight — the last
    snapshot (after layer 47) is P itself: 9·d + 9, 0.38× the KV cache (the paper's 0.42×
    counts P once more)."""
    config = ModelConfig.from_preset("3b", method="attnres")
    cost = get_method("attnres").cost(config, method_options(config))
    assert cost.added_params == 397_409
    assert cost.inflight_state_per_token == 9 * 2048 + 9 == 18_441
    assert round(cost.inflight_state_per_token / KV_PER_TOKEN_3B, 2) == 0.38
    assert cost.persistent_state_per_token == 0
    # §3: 0.44× at 410M, whose last snapshot (after layer 29 of 32) is not P: h₀, 5 snapshots, P
    config = ModelConfig.from_preset("410m", method="attnres")
    cost = get_method("attnres").cost(config, method_options(config))
    assert cost.inflight_state_per_token == 7 * 1024 + 6
    assert round(cost.inflight_state_per_token / (2 * 32 * 4 * 64), 2) == 0.44


@pytest.mark.parametrize("options,match", [
    ({"block_size": 0}, r"block_size \(0\).*>= 1"),
    ({"block_size": 2.0}, r"block_size \(2.0\)"),
    ({"recency_bias": float("nan")}, r"recency_bias \(nan\).*finite"),
    ({"recency_bias": "3"}, r"recency_bias \('3'\)"),
])
def test_invalid_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(method="attnres", method_options=options)
