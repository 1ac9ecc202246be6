"""Combinations of two cross-layer methods (`a+b`): each keeps its hooks; clashes are refused."""

from __future__ import annotations

import pytest
import torch

from depthattn import CausalLM
from depthattn.methods import get_method, method_options
from tests.conftest import random_ids, tiny_config, tiny_model


def test_parts_keep_their_hooks_and_options():
    config = tiny_config(method="depth_attention+denseformer",
                         method_options={"depth_attention": {"stride": 2}})
    assert config.method_options["depth_attention"] == {"stride": 2, "recent_window": 0, "sources": "applications"}
    assert config.method_options["denseformer"] == {"dilation": 1, "period": 1}
    model = CausalLM(config)
    keys = [k for k in model.state_dict() if k.startswith("model.cross_layer.")]
    assert keys and all(k.startswith("model.cross_layer.parts.denseformer.") for k in keys)


def test_denseformer_at_identity_init_leaves_depth_attention_alone():
    """DenseFormer's identity init makes the stream vanilla, so the combination must equal
    Depth-Attention alone with the same backbone weights."""
    alone = tiny_model(seed=0, method="depth_attention")
    combo = CausalLM(tiny_config(method="depth_attention+denseformer")).eval()  # identity DWA
    missing = combo.load_state_dict(alone.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("model.cross_layer.parts.denseformer.") for k in missing)
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(combo(ids), alone(ids), atol=1e-6, rtol=0)
        vanilla = tiny_model(seed=0)
        assert (vanilla(ids) - alone(ids)).abs().max() > 1e-3  # the depth mix is active


def test_cost_adds_parameters_and_flops():
    config = tiny_config(method="depth_attention+mhc")
    combined = get_method(config.method).cost(config, method_options(config))
    da = tiny_config(method="depth_attention")
    mhc = tiny_config(method="mhc")
    cost_da = get_method("depth_attention").cost(da, method_options(da))
    cost_mhc = get_method("mhc").cost(mhc, method_options(mhc))
    # (that this is the real count in the model: the battery, test_every_method.py)
    assert combined.added_params == cost_mhc.added_params
    assert combined.added_flops_per_token == cost_da.added_flops_per_token + cost_mhc.added_flops_per_token


@pytest.mark.parametrize("method, message", [
    ("depth_attention+value_residual", r"cannot be combined: both use mix_entries, mix_values"),
    ("denseformer+mhc", r"cannot be combined: both use .*read"),
    ("depth_attention+depth_attention", r"combines two different methods"),
    ("depth_attention+nope", r"method \('nope'\) is unknown"),
])
def test_clashing_or_unknown_combinations_are_refused(method, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(method=method)


def test_unknown_part_option_is_refused():
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'strid' for method 'depth_attention'"):
        tiny_config(method="depth_attention+mhc", method_options={"depth_attention": {"strid": 1}})
