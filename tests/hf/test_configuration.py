"""DepthAttnConfig: ModelConfig's fields under Hugging Face's names too."""

from __future__ import annotations

import dataclasses

import pytest

from depthattn import ModelConfig
from depthattn.hf import DepthAttnConfig


def test_every_model_config_field_is_a_config_field():
    config = DepthAttnConfig()
    for field in dataclasses.fields(ModelConfig):
        assert hasattr(config, field.name), field.name
    assert config.to_model_config() == ModelConfig()


@pytest.mark.parametrize("alias, name, value", [
    ("num_hidden_layers", "num_layers", 4), ("num_attention_heads", "num_heads", 32),
    ("num_key_value_heads", "num_kv_heads", 8), ("max_position_embeddings", "max_seq_len", 64),
    ("initializer_range", "init_std", 0.05)])
def test_hugging_face_names_are_aliases(alias, name, value):
    config = DepthAttnConfig(**{alias: value})
    assert getattr(config, name) == value and getattr(config, alias) == value


def test_method_defaults_follow_a_geometry_given_by_alias():
    """Depth-Attention's stride defaults to L // 2 of the L given as num_hidden_layers."""
    config = DepthAttnConfig(num_hidden_layers=4, method="depth_attention")
    assert config.num_layers == 4
    assert config.method_options == {"stride": 2, "recent_window": 0, "sources": "applications"}
    assert config.to_model_config().method_options["stride"] == 2


def test_round_trip_through_a_dict():
    config = DepthAttnConfig(num_layers=3, method="depth_attention", eos_token_id=5)
    again = DepthAttnConfig.from_dict(config.to_dict())
    assert again.to_model_config() == config.to_model_config()
    assert again.eos_token_id == 5


def test_the_written_out_fields_are_model_configs():
    """DepthAttnConfig writes ModelConfig's fields out (no class made at run time): the same
    names, types and defaults, so that neither can drift from the other."""
    import dataclasses

    from depthattn.hf.configuration import DepthAttnConfig
    from depthattn.model.config import ModelConfig

    ours = {f.name: f for f in dataclasses.fields(DepthAttnConfig)}
    for f in dataclasses.fields(ModelConfig):
        assert f.name in ours, f.name
        assert str(ours[f.name].type) == str(f.type), f.name
        if f.default is not dataclasses.MISSING:
            assert ours[f.name].default == f.default, f.name
        else:
            assert ours[f.name].default_factory() == f.default_factory(), f.name
