"""``generate(cache_implementation="static")``: our ``DepthAttnStaticCache`` in place of
transformers' ``StaticCache``, with transformers' compiled decoding: the tokens of the default
cache (and of Qwen3's static cache, for vanilla), one graph for every step."""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig

from depthattn.hf.cache import DepthAttnStaticCache
from tests.hf.test_hf_fidelity import (
    CACHE_ARG,
    METHODS,
    our_model,
    out_cache,
    prompts,
    qwen3_and_ours,
)
from tests.hf.test_hf_fidelity import generate as run_generate

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
