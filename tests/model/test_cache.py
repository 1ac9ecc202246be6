"""The KV caches (docs/method.md §4): every cache has the members the decoder reads; cached
decoding equals the full forward for any chunking of the sequence and any left padding of the
batch's rows; the static (fixed-shape) cache and compiled decoding give the growing cache's
logits and eager decoding's tokens, with one graph for every position; a cache stored in a
smaller format is read back as stored (so decoding through it differs from the full forward by
the quantisation only), its size is what the format says, and perplexity through a float32
cache equals the plain forward."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthattn import KVCache, generate
from depthattn.data.loader import IGNORE_INDEX
from depthattn.eval.perplexity import evaluate_perplexity, evaluate_perplexity_cached
from depthattn.model.cache import DecoderCache, StaticKVCache
from depthattn.ops.kv_quant import KV_FORMATS
from tests.conftest import random_ids, tiny_model

ATOL = 1e-5


def left_padded(make_ids, lengths, total, seed=3):
    ids = make_ids(len(lengths), total, seed=seed).clamp(min=1)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, total - n:] = 1
    return ids.masked_fill(mask == 0, 0), mask


# --- the protocol: what the decoder reads -------------------------------------------------------

PROTOCOL_MEMBERS = sorted(set(DecoderCache.__annotations__)
                          | {name for name in vars(DecoderCache) if not name.startswith("_")})


class ProtocolView:
    """A cache seen through ``DecoderCache``'s members only (``without`` hides one more)."""

    def __init__(self, cache, without: str | None = None) -> None:
        self._cache, self._without = cache, without

    def __getattr__(self, name: str):
        if name not in PROTOCOL_MEMBERS or name == self._without:
            raise AttributeError(name)
        return getattr(self._cache, name)


def test_protocol_members():
    """Guard: the members this file checks are the protocol's."""
    assert PROTOCOL_MEMBERS == sorted(["attention_mask", "batch_size", "begin", "end",
                                       "fixed_shape", "length", "max_len", "new_columns",
                                       "past_valid", "update"])


@pytest.mark.parametrize("cache_class", [KVCache, StaticKVCache])
def test_core_caches_implement_the_protocol(make_model, cache_class):
    cache = cache_class.for_model(make_model(), 2, 8)
    assert isinstance(cache, DecoderCache)
    assert all(hasattr(cache, name) for name in PROTOCOL_MEMBERS)


@pytest.mark.parametrize("name", PROTOCOL_MEMBERS)
def test_a_cache_missing_a_protocol_member_is_caught(make_model, name):
    cache = KVCache.for_model(make_model(), 2, 8)
    assert isinstance(ProtocolView(cache), DecoderCache)
    assert not isinstance(ProtocolView(cache, without=name), DecoderCache)


@pytest.mark.parametrize("cache_class", [KVCache, StaticKVCache])
def test_the_decoder_reads_nothing_outside_the_protocol(make_model, make_ids, cache_class):
    """Decoding through a view that exposes the protocol's members only (an attribute read
    outside it would raise) gives the cache's own logits."""
    model = make_model(seed=2, method="depth_attention")
    ids, mask = left_padded(make_ids, [6, 4], 6)
    with torch.no_grad():
        direct, viewed = (cache_class.for_model(model, 2, 9) for _ in range(2))
        expected = [model(ids, attention_mask=mask, cache=direct),
                    model(ids[:, :2], cache=direct)]
        got = [model(ids, attention_mask=mask, cache=ProtocolView(viewed)),
               model(ids[:, :2], cache=ProtocolView(viewed))]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- cached decoding equals the full forward, any chunking, any left padding ---------------------


def chunkings(total: int):
    """Random positive chunk sizes summing to ``total``."""
    return st.lists(st.integers(1, total), min_size=1, max_size=total).map(
        lambda cuts: _sizes(sorted({c for c in cuts if c < total}), total))


def _sizes(cuts: list[int], total: int) -> list[int]:
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:])]


MODELS = {}


def model_for(method: str, stride: int, window: int):
    key = (method, stride, window)
    if key not in MODELS:
        options = {"stride": stride, "recent_window": window} if method != "vanilla" else {}
        MODELS[key] = tiny_model(seed=7, method=method, method_options=options)
    return MODELS[key]


@settings(max_examples=25)
@given(data=st.data(), method=st.sampled_from(["vanilla", "depth_attention"]),
       stride=st.integers(1, 6), window=st.integers(0, 3), length=st.integers(2, 14),
       pads=st.lists(st.integers(0, 5), min_size=1, max_size=3))
def test_cached_chunks_equal_the_full_forward(data, method, stride, window, length, pads):
    model = model_for(method, stride, window)
    T = length + max(pads)
    gen = torch.Generator().manual_seed(length * 31 + sum(pads))
    ids = torch.randint(0, 128, (len(pads), T), generator=gen)
    mask = torch.ones(len(pads), T, dtype=torch.long)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0  # left padding of that row
    sizes = data.draw(chunkings(T), label="chunk sizes")
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = KVCache.for_model(model, len(pads), T)
        pieces, start = [], 0
        for size in sizes:
            pieces.append(model(ids[:, start:start + size],
                                attention_mask=mask[:, :start + size], cache=cache))
            start += size
    cached = torch.cat(pieces, dim=1)
    real = mask.bool()  # padded positions predict nothing; compare the real ones
    torch.testing.assert_close(cached[real], full[real], rtol=0, atol=ATOL)


@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_a_padded_row_equals_the_row_alone(method):
    model = model_for(method, 2, 1)
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([torch.full((1, 3), 5), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    with torch.no_grad():
        alone = model(ids)
        cache = KVCache.for_model(model, 1, 12)
        chunked = torch.cat([model(padded[:, :5], attention_mask=mask[:, :5], cache=cache),
                             model(padded[:, 5:], attention_mask=mask, cache=cache)], dim=1)
    torch.testing.assert_close(chunked[:, 3:], alone, rtol=0, atol=ATOL)


# --- the static cache and compiled decoding -----------------------------------------------------

METHODS = ["vanilla", "depth_attention", "value_residual", "hyper_connections",
           "depth_attention+denseformer"]


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


# --- storage in a smaller format ----------------------------------------------------------------


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
    model = tiny_model(method="depth_attention", seed=6)
    prompt = random_ids(2, 7, seed=7)
    plain = generate(model, prompt, max_new_tokens=6)
    assert torch.equal(generate(model, prompt, max_new_tokens=6, kv_format="float32"), plain)
    int8 = generate(model, prompt, max_new_tokens=6, kv_format="int8")
    assert int8.shape == plain.shape and torch.equal(int8[:, :7], prompt)
    with pytest.raises(ValueError, match="kv_format"):
        generate(model, prompt, max_new_tokens=2, kv_format="int3")
