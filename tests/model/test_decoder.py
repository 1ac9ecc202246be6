"""Our vanilla decoder against transformers' Qwen3ForCausalLM with the same random weights.

Every parameter is randomised, q_norm/k_norm and the RMSNorm gains included, so swapped or
missing norms show up. Comparison in float32 at atol 1e-5 (logits are O(1)).
"""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from depthattn import CausalLM, ModelConfig
from depthattn.methods import resolve_config

ATOL = 1e-5


def hf_config(num_kv_heads=2, attn="eager", num_layers=4, tie=False, **overrides):
    fields = dict(
        vocab_size=160,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=num_kv_heads,
        head_dim=16,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=tie,
        attn_implementation=attn,
    )
    fields.update(overrides)
    return Qwen3Config(**fields)


def hf_model(randomize, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(hf_config(**kwargs))
    randomize(model, seed)
    return model.eval()


def ours_from(hf, method="vanilla", **options):
    model = CausalLM(ModelConfig.from_qwen3(hf.config, method=method, **options))
    model.load_state_dict(hf.state_dict(), strict=True)
    return model.eval()


def ids_for(batch, length, seed=0, vocab=160):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def expected_keys(num_layers):
    """Qwen3ForCausalLM's parameter names, written out (torchtitan's state-dict-key test)."""
    keys = ["model.embed_tokens.weight"]
    for i in range(num_layers):
        p = f"model.layers.{i}."
        keys += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        keys += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
        keys += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        keys += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    return sorted(keys + ["model.norm.weight", "lm_head.weight"])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["G1", "G2", "G4"])
def test_logits_match_transformers(randomize, attn, num_kv_heads):
    hf = hf_model(randomize, num_kv_heads=num_kv_heads, attn=attn)
    ours = ours_from(hf)
    ids = ids_for(2, 11)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert expected.abs().max() > 0.5  # the comparison is not between near-zero tensors
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_parity_is_sensitive_to_the_norm_gains(randomize):
    """Guard: perturbing one k_norm gain in HF alone breaks the comparison above."""
    hf = hf_model(randomize)
    ours = ours_from(hf)
    with torch.no_grad():
        hf.model.layers[1].self_attn.k_norm.weight[3] += 0.5
        diff = (hf(ids_for(2, 11)).logits - ours(ids_for(2, 11))).abs().max()
    assert diff > 1e-3


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["G1", "G2", "G4"])
def test_left_padding_matches_transformers(randomize, attn, num_kv_heads):
    """Left-padded batch with attention_mask: on real tokens, equal to HF given the same mask and
    positions counted from each row's first real token (so each row is as if run alone)."""
    hf = hf_model(randomize, num_kv_heads=num_kv_heads, attn=attn, seed=1)
    ours = ours_from(hf)
    ids = ids_for(3, 9, seed=2)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :4] = 0
    mask[2, :1] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=ATOL)
    # HF's own positions (0..T-1 through the padding) via our explicit position_ids
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask, position_ids=torch.arange(9).expand(3, 9))
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=ATOL)


def test_tied_embeddings_match_transformers(randomize):
    hf = hf_model(randomize, tie=True, seed=4)
    ours = CausalLM(ModelConfig.from_qwen3(hf.config))
    assert ours.config.tie_embeddings
    state = hf.state_dict()
    ours.load_state_dict(state, strict="lm_head.weight" in state)
    ours.eval()
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids_for(2, 7)), hf(ids_for(2, 7)).logits, rtol=0,
                                   atol=ATOL)


def test_export_to_transformers(make_model):
    """The other direction: our config → Qwen3Config, our weights → Qwen3ForCausalLM."""
    ours = make_model(seed=5, num_layers=3)
    hf = Qwen3ForCausalLM(ours.config.to_qwen3()).eval()
    hf.load_state_dict(ours.state_dict(), strict=True)
    ids = ids_for(2, 10, vocab=ours.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=0, atol=ATOL)


# --- names, shapes, parameter counts ------------------------------------------------------


def test_state_dict_keys_and_shapes_are_qwen3s_for_every_method(randomize):
    hf = hf_model(randomize, num_layers=4)
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert sorted(hf_shapes) == expected_keys(4)
    counts = {}
    for method, options in [("vanilla", {}), ("depth_attention", {}),
                            ("depth_attention", {"stride": 1, "recent_window": 2})]:
        model = CausalLM(ModelConfig.from_qwen3(hf.config, method=method, **options))
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert shapes == hf_shapes, method
        model.load_state_dict(hf.state_dict(), strict=True)
        counts[(method, tuple(options))] = sum(p.numel() for p in model.parameters())
    hf_count = sum(p.numel() for p in hf.parameters())
    assert set(counts.values()) == {hf_count}, counts  # Depth-Attention adds no parameters


def test_depth_attention_model_loads_a_qwen3_checkpoint_and_changes_the_output(randomize):
    hf = hf_model(randomize, seed=6)
    depth = ours_from(hf, "depth_attention", stride=1)
    vanilla = ours_from(hf)
    ids = ids_for(1, 8)
    with torch.no_grad():
        assert (depth(ids) - vanilla(ids)).abs().max() > 1e-3
        torch.testing.assert_close(vanilla(ids), hf(ids).logits, rtol=0, atol=ATOL)


# --- config conversion ---------------------------------------------------------------------


def test_config_round_trip_keeps_the_fields():
    hf_cfg = hf_config(num_kv_heads=1, num_layers=5, rms_norm_eps=1e-5,
                       rope_parameters={"rope_type": "default", "rope_theta": 5e5},
                       max_position_embeddings=96, initializer_range=0.03)
    cfg = ModelConfig.from_qwen3(hf_cfg)
    expected = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_layers=5,
                    num_heads=4, num_kv_heads=1, head_dim=16, max_seq_len=96, rms_norm_eps=1e-5,
                    rope_theta=5e5, tie_embeddings=False, method="vanilla")
    assert {k: getattr(cfg, k) for k in expected} == expected
    back = cfg.to_qwen3()
    assert isinstance(back, Qwen3Config)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim",
                 "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(back, name) == getattr(hf_cfg, name), name
    assert back.rope_parameters["rope_theta"] == 5e5
    assert back.rope_parameters.get("rope_type", "default") == "default"
    assert ModelConfig.from_qwen3(back) == cfg


def test_from_qwen3_with_method_options():
    cfg = resolve_config(ModelConfig.from_qwen3(hf_config(num_layers=6), method="depth_attention",
                                                stride=2))
    assert cfg.method == "depth_attention"
    assert cfg.method_options == {"stride": 2, "recent_window": 0, "sources": "applications"}
    cfg = resolve_config(ModelConfig.from_qwen3(hf_config(num_layers=6), method="depth_attention"))
    assert cfg.method_options == {"stride": 3, "recent_window": 0, "sources": "applications"}  # default L // 2
    # the geometry survives the trip through to_qwen3
    again = resolve_config(ModelConfig.from_qwen3(cfg.to_qwen3(), method="depth_attention"))
    assert again == cfg


@pytest.mark.parametrize("field, value", [("attention_bias", True),
                                          ("hidden_act", "gelu")])
def test_from_qwen3_refuses_what_we_do_not_model(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_qwen3(hf_config(**{field: value}))
