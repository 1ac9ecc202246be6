"""Invalid configurations and calls fail early with a ValueError that names the field, the
offending value and what is allowed."""

from __future__ import annotations

import pytest
import torch

from depthattn import KVCache, ModelConfig, generate


def assert_names(excinfo, *fragments):
    """The ValueError's message contains every fragment (field, value, what is allowed)."""
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- configuration -------------------------------------------------------------------------


def test_num_heads_must_divide_hidden_size_without_head_dim(make_config):
    with pytest.raises(ValueError, match="num_heads") as excinfo:
        make_config(head_dim=None, hidden_size=64, num_heads=7, num_kv_heads=7)
    assert_names(excinfo, "7", "64")


def test_num_kv_heads_must_divide_num_heads(make_config):
    with pytest.raises(ValueError, match="num_kv_heads") as excinfo:
        make_config(num_heads=4, num_kv_heads=3)
    assert_names(excinfo, "4", "3")


@pytest.mark.parametrize("stride", [0, -2])
def test_stride_must_be_positive(make_config, stride):
    with pytest.raises(ValueError, match="stride") as excinfo:
        make_config(method="depth_attention", method_options={"stride": stride})
    assert_names(excinfo, str(stride))


def test_recent_window_must_be_non_negative(make_config):
    with pytest.raises(ValueError, match="recent_window") as excinfo:
        make_config(method="depth_attention", method_options={"recent_window": -1})
    assert_names(excinfo, "-1")


def test_unknown_method_lists_the_allowed_ones(make_config):
    with pytest.raises(ValueError, match="method") as excinfo:
        make_config(method="bogus")
    assert_names(excinfo, "bogus", "vanilla", "depth_attention")


def test_unknown_option_is_named(make_config):
    with pytest.raises(ValueError, match="strid") as excinfo:
        make_config(method="depth_attention", method_options={"strid": 2})
    assert_names(excinfo, "stride", "recent_window")
    with pytest.raises(ValueError, match="stride"):
        make_config(method="vanilla", method_options={"stride": 2})  # vanilla takes none


def test_bad_k_norm_position(make_config):
    with pytest.raises(ValueError, match="k_norm_position") as excinfo:
        make_config(k_norm_position="sideways")
    assert_names(excinfo, "sideways", "before_rope")


@pytest.mark.parametrize("field, value", [("num_layers", 0), ("vocab_size", -1),
                                          ("hidden_size", 0)])
def test_sizes_must_be_positive(make_config, field, value):
    with pytest.raises(ValueError, match=field) as excinfo:
        make_config(**{field: value})
    assert_names(excinfo, str(value))


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="nope"):
        ModelConfig.from_preset("nope")
    with pytest.raises(ValueError, match="num_layer\\b|num_layer'"):
        ModelConfig.from_preset("tiny", num_layer=2)


# --- forward calls -------------------------------------------------------------------------


def test_sequence_longer_than_max_seq_len(make_model):
    model = make_model(max_seq_len=16)
    ids = torch.zeros(1, 17, dtype=torch.long)
    with pytest.raises(ValueError, match="max_seq_len") as excinfo:
        model(ids)
    assert_names(excinfo, "16", "17")
    model(ids[:, :16])  # the limit itself is fine


def test_sequence_longer_than_max_seq_len_through_the_cache(make_model):
    model = make_model(max_seq_len=16)
    cache = KVCache.for_model(model, 1, 16)
    with torch.no_grad():
        model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="max_seq_len|max_len"):
            model(torch.zeros(1, 7, dtype=torch.long), cache=cache)


def test_cache_overflow(make_model):
    model = make_model()
    cache = KVCache.for_model(model, 1, 8)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="max_len"):
            model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("bad", [128, 1000, -1])
def test_token_ids_out_of_range(make_model, bad):
    model = make_model()  # vocab 128
    ids = torch.tensor([[1, 2, bad, 3]])
    with pytest.raises(ValueError, match="vocab") as excinfo:
        model(ids)
    assert_names(excinfo, str(bad))


def test_vocab_edge_is_accepted(make_model):
    model = make_model()
    model(torch.tensor([[0, 127]]))


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_generate_rejects_bad_temperature(make_model, temperature):
    model = make_model()
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2, do_sample=True,
                 temperature=temperature)


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.5])
def test_generate_rejects_bad_top_p(make_model, top_p):
    model = make_model()
    with pytest.raises(ValueError, match="top_p") as excinfo:
        generate(model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2, do_sample=True,
                 top_p=top_p)
    assert_names(excinfo, str(top_p))


def test_generate_rejects_bad_top_k(make_model):
    model = make_model()
    with pytest.raises(ValueError, match="top_k"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2, do_sample=True,
                 top_k=0)


def test_generate_past_max_seq_len(make_model):
    model = make_model(max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, torch.zeros(1, 10, dtype=torch.long), max_new_tokens=7)


# --- looped geometry (docs/method.md §7) ---------------------------------------------------------------


LOOPED = {"num_layers": 4, "prelude_layers": 1, "loop_layers": 2}


@pytest.mark.parametrize("overrides, fragments", [
    ({"loop_iterations": 0}, ("loop_iterations", "0", ">= 1")),
    ({"loop_layers": 0, "loop_iterations": 3}, ("loop_iterations", "3", "loop_layers")),
    ({"prelude_layers": 3, "loop_layers": 2}, ("prelude_layers + loop_layers", "5", "4")),
    ({"prelude_layers": -1}, ("prelude_layers", "-1", ">= 0")),
    ({"loop_layers": -2}, ("loop_layers", "-2", ">= 0")),
    ({"loop_injection": "concatenate"}, ("loop_injection", "'concatenate'", "none, add, concat")),
])
def test_bad_looped_geometry(make_config, overrides, fragments):
    with pytest.raises(ValueError) as excinfo:
        make_config(**{**LOOPED, **overrides})
    assert_names(excinfo, *fragments)


def test_unknown_depth_source_rule(make_config):
    with pytest.raises(ValueError, match="sources") as excinfo:
        make_config(**LOOPED, method="depth_attention", method_options={"sources": "iterations"})
    assert_names(excinfo, "'iterations'", "applications, recurrent")


def test_the_recurrent_source_rule_needs_a_looped_model(make_config):
    with pytest.raises(ValueError) as excinfo:
        make_config(method="depth_attention", method_options={"sources": "recurrent"})
    assert_names(excinfo, "'recurrent' needs a looped model", "loop_layers > 0")


def test_looped_config_has_no_qwen3_config(make_config):
    with pytest.raises(ValueError, match="looped"):
        make_config(**LOOPED).to_qwen3()
