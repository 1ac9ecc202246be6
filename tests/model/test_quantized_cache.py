"""A KV cache stored in a smaller format: attention reads what was stored (so decoding through
it differs from the full forward by the quantisation only), its size is what the format says,
and perplexity through a float32 cache equals the plain forward."""

from __future__ import annotations

import pytest
import torch

from depthattn import KVCache
from depthattn.data.loader import IGNORE_INDEX
from depthattn.eval.perplexity import evaluate_perplexity, evaluate_perplexity_cached
from depthattn.ops.kv_quant import KV_FORMATS
from tests.conftest import random_ids, tiny_model


def chunked(model, ids, kv_format, chunk):
    cache = KVCache.for_model(model, ids.shape[0], ids.shape[1], kv_format=kv_format)
    with torch.no_grad():
        return torch.cat([model(ids[:, s:s + chunk], cache=cache)
                          for s in range(0, ids.shape[1], chunk)], dim=1), cache


@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_float32_cache_is_exact_and_smaller_formats_are_close(method):
    model = tiny_model(method=method, seed=3).eval()
    ids = random_ids(2, 24, seed=4)
    with torch.no_grad():
        full = model(ids)
    errors = {}
    for kv_format in (None, *KV_FORMATS):
        out, cache = chunked(model, ids, kv_format, chunk=5)
        errors[kv_format] = float((out - full).abs().max())
    assert errors[None] < 1e-5 and errors["float32"] < 1e-5
    for kv_format in ("bfloat16", "float8_e4m3", "int8"):
        assert 1e-6 < errors[kv_format] < 0.5, (kv_format, errors)
    assert errors["bfloat16"] < errors["float8_e4m3"]


def test_cache_bytes_follow_the_format():
    model = tiny_model(method="depth_attention")
    sizes = {f: KVCache.for_model(model, 2, 16, kv_format=f).nbytes for f in KV_FORMATS}
    elements = 2 * model.config.num_layers * 2 * model.config.num_kv_heads * 16 * \
        model.config.head_dim
    assert sizes["float32"] == 4 * elements and sizes["bfloat16"] == 2 * elements
    assert sizes["float8_e4m3"] == elements
    scales = 2 * model.config.num_layers * 2 * model.config.num_kv_heads * 16 * 4
    assert sizes["int8"] == elements + scales


def batches(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 128, (2, 13), generator=g)
        targets = torch.randint(0, 128, (2, 13), generator=g)
        targets[0, :2] = IGNORE_INDEX
        out.append((ids, targets))
    return out


@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_perplexity_through_a_float32_cache_equals_the_plain_forward(method):
    model = tiny_model(method=method, seed=5)
    plain = evaluate_perplexity(model, batches())
    for kv_format in (None, "float32"):
        cached = evaluate_perplexity_cached(model, batches(), kv_format, prefill_chunk=4)
        assert cached.tokens == plain.tokens
        assert cached.loss == pytest.approx(plain.loss, abs=1e-6)
    int8 = evaluate_perplexity_cached(model, batches(), "int8", prefill_chunk=4)
    assert int8.loss != pytest.approx(plain.loss, abs=1e-7)  # attention read the int8 values


def test_generate_takes_a_cache_format():
    from depthattn import generate

    model = tiny_model(method="depth_attention", seed=6)
    prompt = random_ids(2, 7, seed=7)
    plain = generate(model, prompt, max_new_tokens=6)
    assert torch.equal(generate(model, prompt, max_new_tokens=6, kv_format="float32"), plain)
    int8 = generate(model, prompt, max_new_tokens=6, kv_format="int8")
    assert int8.shape == plain.shape and torch.equal(int8[:, :7], prompt)
    with pytest.raises(ValueError, match="kv_format"):
        generate(model, prompt, max_new_tokens=2, kv_format="int3")
