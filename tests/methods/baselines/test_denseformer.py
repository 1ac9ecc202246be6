"""DenseFormer (docs/baselines.md §4): against a plain transcription of the DWA equations, the
identity init (vanilla with dilation and period too), parameter and state accounting (closed
forms, 3B numbers), options. The shared battery (test_every_method.py) covers decoding, padding,
save/load, names, activation checkpointing, cost() against the real count and vanilla at init
with the default options."""

from __future__ import annotations

import pytest
import torch

from depthattn import CausalLM, ModelConfig
from depthattn.methods import get_method, method_options
from depthattn.methods.baselines.denseformer import live_outputs
from tests.conftest import random_ids, tiny_config, tiny_model
from tests.methods.sublayers import (
    assert_decoding_matches_full_forward,
    block_runner,
)

KV_PER_TOKEN_3B = 2 * 48 * 8 * 64  # 49 152



def reference_logits(model: CausalLM, ids: torch.Tensor, k: int, p: int) -> torch.Tensor:
    """§4a spelled out, 1-based i: history = [Y_0 = h₀, Y_1, ...]; x_i = Σ_{j ≤ i, j ≡ i mod k}
    α_{i,j} Y_j when i mod p == 0, else Y_i; α from `dwa.{i−1}.alpha`, sources ascending."""
    h0, block, head = block_runner(model, ids)
    history, x = [h0], h0
    for i in range(1, model.config.num_layers + 1):
        history.append(block(i - 1, x))
        if i % p == 0:
            alpha = model.get_parameter(f"model.cross_layer.dwa.{i - 1}.alpha")
            sources = [j for j in range(i + 1) if j % k == i % k]
            assert len(alpha) == i // k + 1
            x = sum(a * history[j] for a, j in zip(alpha, sources))
        else:
            x = history[i]
    return head(x)


@pytest.mark.parametrize("k,p", [(1, 1), (2, 1), (1, 2), (2, 3), (3, 2)])
def test_matches_the_dwa_equations(k, p):
    model = tiny_model(seed=11, dtype=torch.float64, method="denseformer",
                       method_options={"dilation": k, "period": p})
    ids = random_ids(2, 9, seed=11)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference_logits(model, ids, k, p),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("k,p", [(2, 1), (2, 3)])
def test_cached_decoding_equals_full_forward_with_dilation_and_period(k, p):
    """The battery covers the default k = p = 1; here the pruned history is exercised."""
    model = tiny_model(seed=12, dtype=torch.float64, method="denseformer",
                       method_options={"dilation": k, "period": p})
    ids = random_ids(2, 8, seed=12)
    assert_decoding_matches_full_forward(model, ids)


@pytest.mark.parametrize("options", [{}, {"dilation": 2}, {"dilation": 3, "period": 2}])
def test_identity_init_weights(options):
    """α_{i,i} = 1, every other α 0 (the battery checks that this is vanilla, default options)."""
    torch.manual_seed(0)
    model = CausalLM(tiny_config(method="denseformer", method_options=options))
    for name, alpha in model.named_parameters():
        if name.startswith("model.cross_layer."):
            assert alpha[-1] == 1 and not alpha[:-1].any(), name


@pytest.mark.parametrize("options", [{"dilation": 2}, {"dilation": 3, "period": 2}])
def test_identity_init_is_exactly_vanilla_with_dilation_and_period(options):
    """The battery (test_every_method.py) covers the default k = p = 1."""
    torch.manual_seed(0)
    model = CausalLM(tiny_config(method="denseformer", method_options=options))
    vanilla = CausalLM(tiny_config())
    missing, unexpected = vanilla.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("model.cross_layer.") for k in unexpected)
    ids = random_ids(2, 10, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), vanilla(ids), atol=0, rtol=0)


@pytest.mark.parametrize("L,k,p", [(6, 1, 1), (6, 2, 1), (6, 1, 2), (7, 3, 2), (5, 5, 5)])
def test_params_match_module_and_closed_form(L, k, p):
    config = tiny_config(num_layers=L, method="denseformer",
                         method_options={"dilation": k, "period": p})
    added = CausalLM(config).num_parameters() - CausalLM(tiny_config(num_layers=L)).num_parameters()
    closed = sum(i // k + 1 for i in range(1, L + 1) if i % p == 0)  # §4b
    cost = get_method("denseformer").cost(config, method_options(config))
    assert added == closed == cost.added_params
    if k == p == 1:
        assert added == L * (L + 3) // 2


def test_parameter_names():
    keys = [k for k in CausalLM(tiny_config(method="denseformer", method_options={"period": 2}))
            .state_dict() if k.startswith("model.cross_layer.")]
    assert keys == ["model.cross_layer.dwa.1.alpha", "model.cross_layer.dwa.3.alpha",
                    "model.cross_layer.dwa.5.alpha"]


def test_history_keeps_only_outputs_a_later_dwa_reads():
    assert max(map(len, live_outputs(6, 1, 1))) == 7  # everything meets in the last DWA
    # One DWA after the last block, reading {h₀, Y_5}: h₀ and the current output only.
    assert max(map(len, live_outputs(5, 5, 5))) == 2
    # k = 2: Y_5 (odd) is read by the DWA after block 5 only, so it is gone after it.
    assert 5 not in live_outputs(6, 2, 1)[6]


def test_cost_at_the_3b_geometry():
    """docs/baselines.md §3: 1 224 params; (L+1)·d = 100 352 in flight, 2.04× the KV cache."""
    config = ModelConfig.from_preset("3b", method="denseformer")
    cost = get_method("denseformer").cost(config, method_options(config))
    assert cost.added_params == 1224
    assert cost.inflight_state_per_token == 100_352
    assert round(cost.inflight_state_per_token / KV_PER_TOKEN_3B, 2) == 2.04
    assert cost.persistent_state_per_token == 0
    assert cost.added_flops_per_token == 2 * 2048 * 1224


@pytest.mark.parametrize("options,match", [
    ({"dilation": 0}, r"dilation \(0\).*\[1, num_layers=6\]"),
    ({"period": 7}, r"period \(7\).*\[1, num_layers=6\]"),
    ({"dilation": True}, r"dilation \(True\)"),
    ({"period": 1.5}, r"period \(1.5\)"),
])
def test_invalid_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(method="denseformer", method_options=options)
