"""Scaled RoPE (Hugging Face's ``rope_parameters``: linear, dynamic, yarn, llama3) and
sliding-window attention (``sliding_window``, ``layer_types``).

The reference is transformers' own Qwen3 with the same settings and weights: our vanilla model
must give its logits, past the trained context (``max_position_embeddings``) too, where the
scaled types differ from plain RoPE. Cached decoding (growing and static caches, left padding)
and packed rows must equal the full forward for a sliding-window model, for vanilla and
Depth-Attention.
"""

from __future__ import annotations

import pytest
import torch

from depthattn import CausalLM, ModelConfig
from depthattn.model.cache import KVCache, StaticKVCache
from depthattn.utils.errors import DepthAttnError
from tests.conftest import randomize_, tiny_config
from tests.model.test_decoder import hf_model, ids_for, ours_from

# float32 logits of size ~1 through 4 layers; the two models differ only in rounding order
ATOL = 2e-5
TRAINED = 64  # max_position_embeddings of test_decoder's Qwen3 geometry
SCALED = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
}


def qwen3_pair(**overrides):
    qwen = hf_model(randomize_, seed=3, **overrides)
    return qwen, ours_from(qwen)


@pytest.mark.parametrize("kind", list(SCALED))
@pytest.mark.parametrize("length", [20, TRAINED + 16], ids=["within", "past_the_context"])
def test_scaled_rope_equals_qwen3(kind, length):
    qwen, ours = qwen3_pair(
        rope_parameters={**SCALED[kind], "rope_theta": 10000.0})
    assert ours.config.rope_parameters["rope_type"] == kind
    ours.model.limit_positions = False  # Qwen3 runs past its trained context; so may we here
    ids = ids_for(2, length)
    with torch.no_grad():
        expected = qwen(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", list(SCALED))
def test_scaling_changes_the_logits(kind):
    """The settings are read: unscaled RoPE gives other logits (dynamic only for a call that
    reaches past the context: the whole call then rotates at the stretched frequencies)."""
    plain = CausalLM(tiny_config(max_seq_len=32)).eval()
    randomize_(plain, 0)
    scaled = CausalLM(tiny_config(max_seq_len=32, rope_parameters=SCALED[kind])).eval()
    scaled.load_state_dict(plain.state_dict())
    plain.model.limit_positions = scaled.model.limit_positions = False
    ids = ids_for(1, 48, vocab=128)
    with torch.no_grad():
        a, b = plain(ids), scaled(ids)
        if kind == "dynamic":
            torch.testing.assert_close(plain(ids[:, :32]), scaled(ids[:, :32]))
    assert not torch.allclose(a[:, -8:], b[:, -8:], atol=1e-4)


def test_scaled_rope_survives_the_qwen3_round_trip():
    config = tiny_config(rope_parameters=SCALED["yarn"], rope_theta=5e5)
    back = ModelConfig.from_qwen3(config.to_qwen3())
    assert back.rope_parameters == config.rope_parameters and back.rope_theta == 5e5


@pytest.mark.parametrize("layer_types", [None, ["full_attention", "sliding_attention"] * 3])
def test_windows_survive_the_qwen3_round_trip(layer_types):
    config = tiny_config(sliding_window=5, layer_types=layer_types)
    assert ModelConfig.from_qwen3(config.to_qwen3()) == config


# --- sliding windows ---------------------------------------------------------------------------

WINDOWED = {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 2}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
def test_sliding_window_equals_qwen3(attn, padded):
    """Qwen3 with layers 2 and 3 of 4 sliding (max_window_layers=2): the same logits."""
    qwen, ours = qwen3_pair(attn=attn, **WINDOWED)
    assert qwen.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert ours.config.layer_types == qwen.config.layer_types and ours.config.sliding_window == 3
    ids = ids_for(2, 12)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :4] = 0
    with torch.no_grad():
        expected = qwen(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)


def test_the_window_is_read():
    """A window as long as the input changes nothing; a shorter one changes the logits."""
    full = CausalLM(tiny_config()).eval()
    randomize_(full, 1)
    logits = {}
    for window in (12, 3):
        model = CausalLM(tiny_config(sliding_window=window)).eval()
        model.load_state_dict(full.state_dict())
        with torch.no_grad():
            logits[window] = model(ids_for(2, 12, vocab=128))
    with torch.no_grad():
        reference = full(ids_for(2, 12, vocab=128))
    torch.testing.assert_close(logits[12], reference)
    assert not torch.allclose(logits[3], reference, atol=1e-3)


def windowed_model(method: str) -> CausalLM:
    options = {"stride": 2} if method == "depth_attention" else {}
    model = CausalLM(tiny_config(method=method, method_options=options, sliding_window=3,
                                 layer_types=["full_attention", "sliding_attention"] * 3)).eval()
    return randomize_(model, 2)


@pytest.mark.parametrize("cache_class", [KVCache, StaticKVCache])
@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_windowed_cached_decoding_equals_the_full_forward(method, cache_class):
    """Prefill 5 tokens of left-padded rows, then chunks of 3 and 1: each chunk's logits equal
    the full forward's (the window spans chunks: a query sees cached keys up to 2 back)."""
    model = windowed_model(method)
    ids = ids_for(2, 9, vocab=128)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = cache_class.for_model(model, batch_size=2, max_len=16)
        seen = 0
        for size in (5, 3, 1):
            part = model(ids[:, seen:seen + size], attention_mask=mask[:, :seen + size],
                         cache=cache)
            real = mask[:, seen:seen + size].bool()
            torch.testing.assert_close(part[real], full[:, seen:seen + size][real], atol=ATOL,
                                       rtol=0)
            seen += size


@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_windowed_packed_rows_equal_each_sequence_alone(method):
    model = windowed_model(method)
    a, b = ids_for(1, 7, seed=1, vocab=128), ids_for(1, 5, seed=2, vocab=128)
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
    with torch.no_grad():
        together = model(packed, position_ids=positions)
        alone = torch.cat([model(a), model(b)], dim=1)
    torch.testing.assert_close(together, alone, atol=ATOL, rtol=0)


# --- bad settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"rope_parameters": {"rope_type": "longrope", "factor": 2.0}}, "rope_type ('longrope')"),
    ({"rope_parameters": {"rope_type": "linear"}}, "factor"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 0.5}}, "factor field must be"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1.0}},
     "contradicts rope_theta"),
    ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}},
     "partial_rotary_factor (0.5)"),
    ({"sliding_window": 0}, "sliding_window"),
    ({"layer_types": ["full_attention"]}, "one per layer"),
    ({"layer_types": ["full"] * 6, "sliding_window": 3}, "'full' is unknown"),
    ({"layer_types": ["sliding_attention"] * 6}, "sliding_window is None"),
])
def test_bad_settings_are_refused_by_name(fields, message):
    with pytest.raises(DepthAttnError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(**fields)


def test_one_spelling_of_each_setting():
    """Unscaled RoPE is None and a uniform layer_types is None, however they were written."""
    assert tiny_config(rope_parameters={"rope_type": "default"}) == tiny_config()
    assert tiny_config(layer_types=["full_attention"] * 6) == tiny_config()
    assert tiny_config(sliding_window=3, layer_types=["sliding_attention"] * 6) == \
        tiny_config(sliding_window=3)


def test_the_hugging_face_model_keeps_scaling_and_windows(tmp_path):
    """Wrapped, saved and loaded with transformers: the same settings and logits."""
    from transformers import AutoModelForCausalLM

    from depthattn.hf import DepthAttnForCausalLM

    core = randomize_(CausalLM(tiny_config(
        method="depth_attention", sliding_window=3, layer_types=["full_attention",
                                                                 "sliding_attention"] * 3,
        rope_parameters=SCALED["yarn"])).eval(), 4)
    DepthAttnForCausalLM.from_core(core).save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.core_config == core.config
    ids = ids_for(2, 40, vocab=128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, core(ids), atol=ATOL, rtol=0)
