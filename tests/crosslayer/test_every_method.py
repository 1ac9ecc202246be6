"""The battery every registered cross-layer method must pass (a new method is one file plus
its own tests; this file covers it automatically): forward/backward, cached decoding equal to the
full forward, batch independence under left padding, save/load, Qwen3 names for the backbone,
the vanilla-sized KV cache, option validation."""

from __future__ import annotations

import re

import pytest
import torch

from depthattn import CausalLM, KVCache, load_model, save_model
from depthattn.crosslayer import method_names
from tests.conftest import random_ids, tiny_config, tiny_model

# Every registered method, and combinations of an in-attention with a residual-stream method.
METHODS = method_names() + ["depth_attention+denseformer", "depth_attention+mhc",
                            "depth_attention+muddformer"]
QWEN3_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")


@pytest.mark.parametrize("method", METHODS)
def test_forward_backward_reach_every_parameter(method):
    model = tiny_model(seed=1, method=method).train()
    ids = random_ids(2, 9, seed=1)
    logits = model(ids)
    assert logits.shape == (2, 9, model.config.vocab_size)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunks", [(5, 1, 1, 1, 1, 1, 1), (3, 4, 2, 2)])
def test_cached_decoding_equals_full_forward(method, chunks):
    # float64: this checks the logic; random weights make some methods' depth logits large
    # enough that float32 rounding of different chunk shapes alone reaches 1e-5.
    model = tiny_model(seed=2, method=method, dtype=torch.float64)
    ids = random_ids(2, sum(chunks), seed=2)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.for_model(model, 2, ids.shape[1])
        pieces, start = [], 0
        for size in chunks:
            pieces.append(model(ids[:, start:start + size], cache=cache))
            start += size
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_left_padded_batch_equals_each_sequence_alone(method):
    model = tiny_model(seed=3, method=method, dtype=torch.float64)
    long, short = random_ids(1, 10, seed=3), random_ids(1, 6, seed=4)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        together = model(batch, attention_mask=mask)
        torch.testing.assert_close(together[:1], model(long), atol=1e-6, rtol=0)
        torch.testing.assert_close(together[1:, 4:], model(short), atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method, tmp_path):
    model = tiny_model(seed=4, method=method)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config
    ids = random_ids(2, 7, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_backbone_keeps_qwen3_names_and_extras_live_under_cross_layer(method):
    vanilla_keys = set(CausalLM(tiny_config()).state_dict())
    keys = set(CausalLM(tiny_config(method=method)).state_dict())
    assert vanilla_keys <= keys
    extras = keys - vanilla_keys
    assert all(k.startswith("model.cross_layer.") for k in extras), sorted(extras)
    assert all(k.startswith(QWEN3_PREFIXES) for k in vanilla_keys)


@pytest.mark.parametrize("method", METHODS)
def test_kv_cache_is_vanilla_sized(method):
    sizes = {m: KVCache.for_model(CausalLM(tiny_config(method=m)), 3, 32).nbytes
             for m in ("vanilla", method)}
    assert sizes[method] == sizes["vanilla"]


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option_is_refused_with_the_allowed_ones(method):
    with pytest.raises(ValueError, match=rf"unknown option.*'no_such_option'.*{re.escape(method)}.*allowed"):
        tiny_config(method=method, method_options={"no_such_option": 1})
