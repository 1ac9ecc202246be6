"""The Hugging Face caches adapt the core's: both have every member the decoder reads. With
``DepthAttnCache`` transformers' cache operations (repeat, select, crop, reset; beam search's
reorder is in test_hf_fidelity.py) move the padding record with the keys and values, so that
decoding continues as an uncached forward over what the cache now holds, and assisted decoding
(which crops rejected candidates) gives greedy decoding's tokens. ``generate(
cache_implementation="static")`` puts our ``DepthAttnStaticCache`` in place of transformers'
``StaticCache``, with transformers' compiled decoding: the tokens of the default cache (and of
Qwen3's static cache, for vanilla), one graph for every step."""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig

from depthattn.hf.cache import DepthAttnCache, DepthAttnStaticCache
from depthattn.model.cache import DecoderCache
from tests.hf.test_hf_fidelity import (
    ATOL,
    CACHE_ARG,
    METHODS,
    our_model,
    out_cache,
    prompts,
    qwen3_and_ours,
)
from tests.hf.test_hf_fidelity import generate as run_generate
from tests.model.test_cache import PROTOCOL_MEMBERS, ProtocolView

# --- the protocol -------------------------------------------------------------------------------


@pytest.mark.parametrize("cache_class", [DepthAttnCache, DepthAttnStaticCache])
def test_hugging_face_caches_implement_the_protocol(cache_class):
    model = our_model()
    cache = cache_class(model.core_config, 8) if cache_class is DepthAttnStaticCache \
        else cache_class(model.config)
    assert isinstance(cache, DecoderCache)
    assert all(hasattr(cache, name) for name in PROTOCOL_MEMBERS)
    with torch.no_grad():  # and the decoder needs nothing else of them
        model.core()(prompts()[0], cache=ProtocolView(cache))
    assert cache.length == 8


# --- DepthAttnCache: transformers' operations carry the padding record --------------------------

NEW = torch.randint(1, 128, (3, 2), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("operation", ["repeat", "select", "crop", "reset"])
def test_cache_operations_keep_the_padding_record_with_the_layers(operation):
    """After the operation, two new tokens through the cache give the logits of an uncached
    forward over the (left-padded) tokens the cache now holds and the new ones."""
    model = our_model(**METHODS["depth_attention"])
    ids, mask = prompts()  # rows of 8, 5 and 3 real tokens, left-padded to 8
    with torch.no_grad():
        cache = out_cache(model(ids, attention_mask=mask, use_cache=True))
        if operation == "repeat":
            cache.batch_repeat_interleave(2)
            rows = torch.tensor([0, 0, 1, 1, 2, 2])
            ids, mask = ids[rows], mask[rows]
        elif operation == "select":
            cache.batch_select_indices(torch.tensor([2, 0]))
            ids, mask = ids[[2, 0]], mask[[2, 0]]
        elif operation == "crop":
            cache.crop(-2)  # row 2 keeps one real token
            ids, mask = ids[:, :6], mask[:, :6]
        else:
            cache.reset()
            ids, mask = ids[:, :0], mask[:, :0]
        assert cache.get_seq_length() == cache.length == ids.shape[1]
        new = NEW.repeat_interleave(2, 0) if operation == "repeat" else NEW[:ids.shape[0]]
        full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
        got = model(new, attention_mask=full_mask, **{CACHE_ARG: cache}).logits
        expected = model(torch.cat([ids, new], dim=1), attention_mask=full_mask,
                         use_cache=False).logits[:, -new.shape[1]:]
    assert cache.length == ids.shape[1] + new.shape[1]
    assert torch.allclose(got, expected, atol=ATOL), (got - expected).abs().max()


@pytest.mark.parametrize("assistant", ["prompt_lookup", "model"])
def test_assisted_decoding_gives_the_greedy_tokens(assistant, monkeypatch):
    """Candidates the model rejects are cropped from the cache (with their padding record):
    the tokens are greedy decoding's. A left-padded row (assisted decoding takes one row)."""
    model = our_model(**METHODS["depth_attention"])
    ids, mask = prompts()
    ids, mask = torch.cat([ids[1:2], ids[1:2, 3:]], 1), torch.cat([mask[1:2], mask[1:2, 3:]], 1)
    if assistant == "prompt_lookup":  # the repeated prompt gives it candidates
        options = dict(prompt_lookup_num_tokens=3)
    else:
        options = dict(assistant_model=our_model(**METHODS["depth_attention"], seed=3))
    removed, crop = [], DepthAttnCache.crop

    def counting_crop(self, *args, **kwargs):
        before = self.length
        crop(self, *args, **kwargs)
        removed.append(before - self.length)

    monkeypatch.setattr(DepthAttnCache, "crop", counting_crop)
    got = run_generate(model, ids, mask, max_new_tokens=12, **options)
    assert max(removed) > 0  # guard: candidates were rejected and cropped
    assert torch.equal(got, run_generate(model, ids, mask, max_new_tokens=12))


# --- DepthAttnStaticCache -----------------------------------------------------------------------

STATIC = dict(cache_implementation="static")


def compiled() -> dict:
    """transformers compiles the decoding forward on CPU only when asked to."""
    config = CompileConfig()
    config._compile_all_devices = True
    return dict(cache_implementation="static", compile_config=config)


def test_vanilla_static_generation_is_qwen3s():
    qwen, ours = qwen3_and_ours()
    ids, mask = prompts()
    for options in ({}, dict(num_beams=3), dict(do_sample=True, top_k=20)):
        expected = run_generate(qwen, ids, mask, **STATIC, **options)
        assert torch.equal(run_generate(ours, ids, mask, **STATIC, **options), expected)
        assert torch.equal(run_generate(ours, ids, mask, **options), expected)


@pytest.mark.parametrize("method", list(METHODS))
def test_static_cache_gives_the_default_caches_tokens(method):
    model = our_model(**METHODS[method])
    ids, mask = prompts()
    for options in ({}, dict(num_beams=3), dict(do_sample=True, top_p=0.9)):
        assert torch.equal(run_generate(model, ids, mask, **STATIC, **options),
                           run_generate(model, ids, mask, **options)), options


def test_compiled_static_generation_without_recompiling():
    """transformers compiles the decoding forward; a second call (another prompt, same cache
    length) must reuse the graph."""
    model = our_model(**METHODS["depth_attention"])
    ids, mask = prompts()
    expected = run_generate(model, ids, mask)
    assert torch.equal(run_generate(model, ids, mask, **compiled()), expected)
    other, other_mask = prompts(seed=5, lengths=(8, 8, 2))
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = run_generate(model, other, other_mask, **compiled())
    assert torch.equal(got, run_generate(model, other, other_mask))


def test_manual_loop_with_a_static_cache_equals_the_full_forward():
    model = our_model(**METHODS["depth_attention"])
    ids, mask = prompts()
    cache = DepthAttnStaticCache(model.core_config, max_len=12)
    with torch.no_grad():
        first = model(ids[:, :6], attention_mask=mask[:, :6], **{CACHE_ARG: cache})
        assert out_cache(first) is cache and cache.get_seq_length() == 6
        wide = torch.nn.functional.pad(mask, (0, 12 - mask.shape[1]))  # every slot, as generate
        rest = model(ids[:, 6:], attention_mask=wide, **{CACHE_ARG: cache})
        full = model(ids, attention_mask=mask, use_cache=False)
    real = mask.bool()  # a padding position's logits are read by no one
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1)[real],
                               full.logits[real], rtol=0, atol=5e-5)
    contradicting = wide.clone()
    contradicting[2, 0] = 1  # row 2 was padding there
    with torch.no_grad(), pytest.raises(ValueError, match="contradict"):
        model(ids[:, :1], attention_mask=contradicting, **{CACHE_ARG: cache})


def test_what_the_static_cache_cannot_do_is_refused():
    model = our_model()
    cache = DepthAttnStaticCache(model.core_config, max_len=8)
    for call in (lambda: cache.crop(-1), lambda: cache.batch_repeat_interleave(2),
                 lambda: cache.batch_select_indices(torch.tensor([0]))):
        with pytest.raises(ValueError, match="not supported by the static cache"):
            call()
    ids, mask = prompts()
    with pytest.raises(ValueError, match="cache_implementation='offloaded'"):
        run_generate(model, ids, mask, cache_implementation="offloaded")
