"""ModelConfig: presets, defaults, derived fields, method options, dict round trips."""

from __future__ import annotations

import json

import pytest
import torch

from depthattn import PRESETS, CausalLM, ModelConfig
from depthattn.methods import get_method, method_names, resolve_config
from depthattn.methods.depth_attention import DepthAttentionOptions
from depthattn.model.config import PRESETS as CONFIG_PRESETS

CONTRACT_PRESETS = ["tiny", "360m", "500m", "710m", "1.5b", "3b", "410m"]


def test_presets_are_the_contracts():
    assert PRESETS is CONFIG_PRESETS
    assert set(CONTRACT_PRESETS) <= set(PRESETS)


def expected_num_parameters(cfg: ModelConfig) -> int:
    """Counted by hand from the architecture (docs/method.md §1): untied embeddings, no biases."""
    D, I, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    d, H, H_kv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    attn = D * H * d + 2 * D * H_kv * d + H * d * D + 2 * d  # q, k, v, o, q_norm, k_norm
    mlp = 3 * D * I
    per_layer = attn + mlp + 2 * D  # two RMSNorm gains
    embeddings = V * D * (1 if cfg.tie_embeddings else 2)
    return embeddings + L * per_layer + D  # + final norm


@pytest.mark.parametrize("name", CONTRACT_PRESETS)
def test_preset_builds_config_and_counts_parameters_without_allocating(name):
    cfg = ModelConfig.from_preset(name)
    assert cfg.method == "vanilla"
    assert cfg.head_dim is not None and cfg.num_heads % cfg.num_kv_heads == 0
    with torch.device("meta"):  # no memory: the big presets are never materialised
        model = CausalLM(cfg)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_num_parameters(cfg)
    if hasattr(model, "num_parameters"):
        assert model.num_parameters() == count
    depth = ModelConfig.from_preset(name, method="depth_attention")
    with torch.device("meta"):
        assert sum(p.numel() for p in CausalLM(depth).parameters()) == count  # no parameters


def test_preset_sizes_increase_with_their_names():
    counts = [expected_num_parameters(ModelConfig.from_preset(n))
              for n in ["360m", "500m", "710m", "1.5b", "3b"]]
    assert counts == sorted(counts)


@pytest.mark.parametrize("name", CONTRACT_PRESETS)
def test_preset_depth_attention_default_stride_is_half_the_layers(name):
    cfg = resolve_config(ModelConfig.from_preset(name, method="depth_attention"))
    assert cfg.method_options == {"stride": max(1, cfg.num_layers // 2), "recent_window": 0, "sources": "applications"}


def test_paper_3b_preset():
    """The released 3B model: 48 layers, 32 q / 8 kv heads, head_dim 64, stride 24 (docs/method.md §2)."""
    cfg = resolve_config(ModelConfig.from_preset("3b", method="depth_attention"))
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (48, 32, 8, 64)
    assert cfg.hidden_size == 2048 and not cfg.tie_embeddings
    assert cfg.method_options["stride"] == 24


def test_preset_overrides():
    cfg = resolve_config(ModelConfig.from_preset("tiny", num_layers=2, method="depth_attention",
                                                 method_options={"stride": 2}))
    assert cfg.num_layers == 2
    assert cfg.method_options == {"stride": 2, "recent_window": 0, "sources": "applications"}
    assert cfg.hidden_size == PRESETS["tiny"]["hidden_size"]
    assert ModelConfig.from_preset("tiny").num_layers == PRESETS["tiny"]["num_layers"]


@pytest.mark.parametrize("num_layers, stride", [(1, 1), (2, 1), (3, 1), (7, 3), (8, 4), (48, 24)])
def test_default_stride_is_max_one_half_layers(make_config, num_layers, stride):
    cfg = make_config(num_layers=num_layers, method="depth_attention")
    assert cfg.method_options == {"stride": stride, "recent_window": 0, "sources": "applications"}


def test_explicit_options_are_kept(make_config):
    cfg = make_config(method="depth_attention", method_options={"stride": 5, "recent_window": 2})
    assert cfg.method_options == {"stride": 5, "recent_window": 2,
                                  "sources": "applications"}


def test_head_dim_defaults_to_hidden_over_heads(make_config):
    assert make_config(head_dim=None, hidden_size=96, num_heads=6, num_kv_heads=3).head_dim == 16
    assert make_config(head_dim=8).head_dim == 8  # explicit head_dim need not be D / H


def test_defaults():
    cfg = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2,
                      num_heads=4, num_kv_heads=2)
    assert cfg.tie_embeddings is False
    assert cfg.k_norm_position == "before_rope"  # docs/method.md §6: Qwen3's order
    assert cfg.method == "vanilla"
    assert cfg.head_dim == 16


def test_with_method_keeps_geometry(make_config):
    base = make_config()
    depth = resolve_config(base.with_method("depth_attention", stride=2, recent_window=1))
    assert depth.method == "depth_attention"
    assert depth.method_options == {"stride": 2, "recent_window": 1,
                                    "sources": "applications"}
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_seq_len", "rope_theta", "rms_norm_eps",
                 "k_norm_position", "tie_embeddings"):
        assert getattr(depth, name) == getattr(base, name), name
    assert resolve_config(depth.with_method("vanilla")) == base
    assert resolve_config(base.with_method("depth_attention")).method_options["stride"] == 3


@pytest.mark.parametrize("overrides", [
    {},
    dict(method="depth_attention", method_options={"stride": 2, "recent_window": 1},
         k_norm_position="after_rope", tie_embeddings=True),
])
def test_dict_round_trip_through_json(make_config, overrides):
    cfg = make_config(**overrides)
    data = json.loads(json.dumps(cfg.to_dict()))
    again = ModelConfig.from_dict(data)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_registry():
    names = method_names()
    assert "vanilla" in names and "depth_attention" in names
    assert get_method("depth_attention") is not None
    opts = DepthAttentionOptions(stride=3, recent_window=1)
    assert (opts.stride, opts.recent_window) == (3, 1)


def test_looped_fields_flow_everywhere(tmp_path):
    """The looped geometry (docs/method.md §7) goes where every ModelConfig field goes: the constructor,
    preset and Qwen3 overrides, to_dict/save/load, and a run's model_overrides (TOML or the
    CLI's key=value)."""
    from depthattn.train.config import load_train_config

    loop = {"prelude_layers": 1, "loop_layers": 2, "loop_iterations": 3,
            "loop_injection": "concat"}
    cfg = ModelConfig.from_preset("tiny", **loop)
    assert cfg.num_applications == 8 + 2 * 2
    cfg.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == cfg
    qwen = ModelConfig(num_layers=4).to_qwen3()
    assert ModelConfig.from_qwen3(qwen, overrides=loop).num_applications == 4 + 2 * 2
    (tmp_path / "run.toml").write_text(
        'model = "tiny"\n[model_overrides]\nloop_layers = 2\nloop_iterations = 4\n')
    run = load_train_config(tmp_path / "run.toml", overrides=[
        'model_overrides={"loop_layers": 2, "loop_iterations": 5, "prelude_layers": 1}'])
    assert run.model_config().num_applications == 8 + 2 * 4
    assert load_train_config(tmp_path / "run.toml").model_config().num_applications == 8 + 2 * 3
