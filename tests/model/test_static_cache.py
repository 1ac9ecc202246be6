"""The static (fixed-shape) cache and compiled decoding: the same logits and tokens as the
growing ``KVCache`` and eager decoding, one graph for every position."""

from __future__ import annotations

import pytest
import torch

from depthattn import KVCache, generate
from depthattn.model.cache import StaticKVCache

ATOL = 1e-5
METHODS = ["vanilla", "depth_attention", "value_residual", "hyper_connections",
           "depth_attention+denseformer"]


def left_padded(make_ids, lengths, total, seed=3):
    ids = make_ids(len(lengths), total, seed=seed).clamp(min=1)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, total - n:] = 1
    return ids.masked_fill(mask == 0, 0), mask


@torch.no_grad()
def decode(model, cache_class, ids, mask, steps, kv_format=None):
    """Prefill the padded prompt, then feed the argmax token by token: every step's logits."""
    cache = cache_class.for_model(model, ids.shape[0], ids.shape[1] + steps, kv_format=kv_format)
    logits = [model(ids, attention_mask=mask, cache=cache)[:, -1]]
    for _ in range(steps):
        logits.append(model(logits[-1].argmax(-1, keepdim=True), cache=cache)[:, -1])
    assert cache.length == ids.shape[1] + steps
    return torch.stack(logits, 1), cache


@pytest.mark.parametrize("method", METHODS)
def test_static_cache_gives_the_growing_caches_logits(make_model, make_ids, method):
    model = make_model(seed=4, method=method)
    ids, mask = left_padded(make_ids, [7, 3, 5], 7)
    expected, _ = decode(model, KVCache, ids, mask, 6)
    torch.testing.assert_close(decode(model, StaticKVCache, ids, mask, 6)[0], expected,
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("kv_format", ["bfloat16", "int8"])
def test_static_cache_stores_the_same_quantised_values(make_model, make_ids, kv_format):
    """Layer 0's stored codes (a function of the tokens alone) are bit-identical; the logits
    agree to 1e-4, not 1e-5: attention over the longer, masked key axis rounds differently, and
    the coarser stored values amplify it layer after layer."""
    model = make_model(seed=5, method="depth_attention")
    ids, mask = left_padded(make_ids, [6, 4], 6)
    static, static_cache = decode(model, StaticKVCache, ids, mask, 5, kv_format)
    growing, growing_cache = decode(model, KVCache, ids, mask, 5, kv_format)
    for name in ("keys", "values", "key_scales", "value_scales"):
        for a, b in zip(getattr(static_cache, name)[:1], getattr(growing_cache, name)[:1]):
            assert torch.equal(a, b), name
    torch.testing.assert_close(static, growing, rtol=0, atol=1e-4)


def test_static_cache_hides_unwritten_slots(make_model, make_ids):
    """Slots past the written ones hold garbage here: the mask must keep it out."""
    model = make_model(seed=6, method="depth_attention")
    ids = make_ids(2, 5, seed=1)
    cache = StaticKVCache.for_model(model, 2, 12)
    for buffer in (*cache.keys, *cache.values):
        buffer.normal_(0, 50)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, cache=cache), model(ids), rtol=0, atol=ATOL)


def test_static_cache_refuses_overflow(make_model, make_ids):
    model = make_model(method="vanilla")
    cache = StaticKVCache.for_model(model, 1, 4)
    with torch.no_grad():
        model(make_ids(1, 3), cache=cache)
        with pytest.raises(ValueError, match="do not fit in its max_len"):
            model(make_ids(1, 2), cache=cache)


def test_compiled_decoding_gives_eager_tokens_without_recompiling(make_model, make_ids):
    """fullgraph=True fails on any graph break; a second call with other prompts, at other
    positions, must reuse the graph (a recompilation is an error here)."""
    model = make_model(seed=7, method="depth_attention").eval()
    ids, mask = left_padded(make_ids, [6, 2], 6)
    eager = generate(model, ids, attention_mask=mask, max_new_tokens=8)
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=8,
                                compile=True), eager)
    other, other_mask = left_padded(make_ids, [9, 9], 9, seed=8)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = generate(model, other, attention_mask=other_mask, max_new_tokens=5,
                            compile=True)
    assert torch.equal(compiled, generate(model, other, attention_mask=other_mask,
                                          max_new_tokens=5))


def test_compile_must_be_a_bool(make_model, make_ids):
    with pytest.raises(ValueError, match="compile"):
        generate(make_model(), make_ids(1, 3), max_new_tokens=2, compile="yes")
