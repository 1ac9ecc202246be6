"""Multi-head latent attention (docs/method.md §9) in the core model: cached decoding (any
chunking, left padding, the static cache, ``generate``) equals the full forward for vanilla MLA
and for every rule; the cache holds MLA's latent entries (d_c + d_rope per token and layer, plus
d_c under the ``values`` rule); the residual-stream methods run unchanged; every setting MLA
cannot take is refused by name. The float64 reference of §9 is in test_mla_reference.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthattn import KVCache, generate
from depthattn.analysis.depth_maps import depth_map
from depthattn.model.cache import StaticKVCache
from depthattn.model.config import ModelConfig
from depthattn.utils.errors import DepthAttnError
from tests.conftest import random_ids, tiny_model

ATOL = 1e-5
MLA = dict(num_kv_heads=4, head_dim=None, attention="mla", kv_lora_rank=12,
           qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=10)
RULES = {  # label: (method, options)
    "vanilla": ("vanilla", {}),
    "latent": ("depth_attention", {"stride": 2, "recent_window": 1}),
    "values": ("depth_attention", {"stride": 2, "recent_window": 1, "mla_mix": "values"}),
    "latent_residual": ("value_residual", {}),
    "latent_residual_learned": ("value_residual", {"mode": "learned"}),
}
STREAM_METHODS = ["denseformer", "hyper_connections", "mhc", "attnres", "block_attnres",
                  "depth_attention+mhc"]
MODELS: dict[tuple, torch.nn.Module] = {}


def mla_model(rule: str, q_lora_rank: int | None = None, rope_interleave: bool = True,
              dtype: torch.dtype = torch.float32):
    key = (rule, q_lora_rank, rope_interleave, dtype)
    if key not in MODELS:
        method, options = RULES.get(rule, (rule, {}))
        MODELS[key] = tiny_model(seed=5, dtype=dtype, method=method, method_options=options,
                                 q_lora_rank=q_lora_rank, rope_interleave=rope_interleave, **MLA)
    return MODELS[key]


def left_padded(batch: int, total: int, pads: list[int], seed: int = 0):
    ids = random_ids(batch, total, seed=seed)
    mask = torch.ones(batch, total, dtype=torch.long)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    return ids, mask


@settings(max_examples=20, deadline=None)
@given(rule=st.sampled_from(sorted(RULES)), q_lora=st.sampled_from([None, 6]),
       interleave=st.booleans(), length=st.integers(2, 10),
       pads=st.lists(st.integers(0, 4), min_size=1, max_size=3), data=st.data())
def test_cached_chunks_equal_the_full_forward(rule, q_lora, interleave, length, pads, data):
    model = mla_model(rule, q_lora, interleave)
    T = length + max(pads)
    ids, mask = left_padded(len(pads), T, pads, seed=length)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, T - 1), max_size=4), label="cuts")))
    edges = [0, *cuts, T]
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = KVCache.for_model(model, len(pads), T)
        pieces = [model(ids[:, a:b], attention_mask=mask[:, :b], cache=cache)
                  for a, b in zip(edges, edges[1:])]
    real = mask.bool()
    torch.testing.assert_close(torch.cat(pieces, 1)[real], full[real], rtol=0, atol=ATOL)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_one_token_at_a_time_and_the_static_cache_equal_the_full_forward(rule):
    model = mla_model(rule)
    ids, mask = left_padded(2, 9, [0, 3], seed=1)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        for cache_class in (KVCache, StaticKVCache):
            cache = cache_class.for_model(model, 2, 9)
            steps = [model(ids[:, :3], attention_mask=mask[:, :3], cache=cache)]
            steps += [model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache)
                      for t in range(3, 9)]
            torch.testing.assert_close(torch.cat(steps, 1)[mask.bool()], full[mask.bool()],
                                       rtol=0, atol=ATOL, msg=cache_class.__name__)


@pytest.mark.parametrize("rule", ["vanilla", "latent", "values"])
def test_generate_continues_as_the_full_forward_predicts(rule):
    model = mla_model(rule)
    ids, mask = left_padded(2, 6, [0, 2], seed=2)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=5, prefill_chunk_size=4)
    with torch.no_grad():
        logits = model(out, attention_mask=torch.cat([mask, torch.ones(2, 5, dtype=torch.long)], 1))
    torch.testing.assert_close(out[:, 6:], logits[:, 5:-1].argmax(-1), rtol=0, atol=0)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_cache_holds_mla_entries(rule):
    model = mla_model(rule)
    cache = KVCache.for_model(model, 1, 5)
    with torch.no_grad():
        model(random_ids(1, 5), cache=cache)
    L, d_c, d_rope = 6, MLA["kv_lora_rank"], MLA["qk_rope_head_dim"]
    per_token_layer = d_c + d_rope + (d_c if rule == "values" else 0)
    assert model.config.kv_cache_width == per_token_layer
    assert cache.nbytes == L * per_token_layer * 5 * 4  # float32
    assert cache.keys[0].shape == (1, 1, 5, d_c + d_rope)


@pytest.mark.parametrize("method", STREAM_METHODS)
def test_residual_stream_methods_run_unchanged_on_mla(method):
    # float64: Block AttnRes's normalised sources amplify float32 rounding past 1e-5
    model = mla_model(method, dtype=torch.float64)
    ids = random_ids(2, 7)
    logits = model.train()(ids)
    logits.float().logsumexp(-1).mean().backward()
    model.eval()
    assert all(p.grad is not None and p.grad.isfinite().all()
               for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.for_model(model, 2, 7)
        cached = torch.cat([model(ids[:, :4], cache=cache), model(ids[:, 4:], cache=cache)], 1)
    # mHC's Sinkhorn stops on a tolerance, so its result depends on the call's tokens
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-6 if "mhc" in method else 1e-10)


def test_depth_maps_have_one_map_for_the_latent_entry():
    maps = depth_map(mla_model("latent"), [(random_ids(2, 8), None)])
    assert maps.mean_weight.shape == (1, 6, 7)
    sums = maps.mean_weight.nan_to_num().sum(-1)[0, 1:]  # layer 0 has no sources
    torch.testing.assert_close(sums, torch.ones_like(sums, dtype=sums.dtype))


@pytest.mark.parametrize("overrides, message", [
    (dict(method="muddformer"), "muddformer cannot run on multi-head latent attention"),
    (dict(method="value_residual", method_options={"mode": "gated"}),
     "'gated' has no form on multi-head latent attention"),
    (dict(method="depth_attention", method_options={"mla_mix": "keys"}),
     r"mla_mix \('keys'\) must be one of latent, values"),
    (dict(num_kv_heads=2), r"num_kv_heads \(2\) must equal num_heads \(4\)"),
    (dict(head_dim=16), r"head_dim \(16\) must be qk_nope_head_dim \+ qk_rope_head_dim \(12\)"),
    (dict(kv_lora_rank=None), "attention 'mla' needs kv_lora_rank"),
    (dict(qk_rope_head_dim=5), r"qk_rope_head_dim \(5\) must be even"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 2.0,
                           "original_max_position_embeddings": 64}),
     "rope_parameters .* not supported with attention 'mla'"),
    (dict(loop_layers=2), r"loop_layers \(2\) is not supported with attention 'mla'"),
    (dict(attention="mqa"), r"attention \('mqa'\) must be one of gqa, mla"),
    (dict(k_norm_position="after_rope"), r"k_norm_position \('after_rope'\) applies to GQA"),
    (dict(rope_interleave="yes"), r"rope_interleave \('yes'\) must be True or False"),
])
def test_what_mla_cannot_take_is_refused_by_name(overrides, message):
    with pytest.raises(DepthAttnError, match=message):
        tiny_model(**{**MLA, **overrides})


def test_mla_settings_are_refused_on_gqa_models():
    with pytest.raises(DepthAttnError, match=r"kv_lora_rank \(8\) is an MLA dimension"):
        ModelConfig.from_preset("tiny", kv_lora_rank=8)
    with pytest.raises(DepthAttnError, match=r"rope_interleave \(False\) applies to MLA"):
        ModelConfig.from_preset("tiny", rope_interleave=False)
    with pytest.raises(DepthAttnError, match=r"mla_mix \('latent'\) applies to multi-head latent"):
        tiny_model(method="depth_attention", method_options={"mla_mix": "latent"})


@pytest.mark.parametrize("absorbed", [False, True])
def test_sliding_window_layers_decode_as_the_full_forward(absorbed):
    """Layers 1 and 3 see their last 3 tokens; both forms, chunked and token by token."""
    model = tiny_model(seed=5, method="depth_attention", sliding_window=3,
                       layer_types=["full_attention", "sliding_attention"] * 3, **MLA)
    set_absorbed(model, absorbed)
    ids, mask = left_padded(2, 9, [0, 2], seed=6)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        unwindowed = tiny_model(seed=5, method="depth_attention", **MLA)(ids, attention_mask=mask)
        cache = KVCache.for_model(model, 2, 9)
        steps = [model(ids[:, :4], attention_mask=mask[:, :4], cache=cache)]
        steps += [model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache)
                  for t in range(4, 9)]
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], rtol=0, atol=ATOL)
    assert not torch.allclose(full[real], unwindowed[real], atol=1e-3)  # the window bites


def test_a_learned_latent_residual_refuses_split_heads():
    """Tensor parallelism gives a process a share of the heads; simulated here by a query
    projection with half of them."""
    model = tiny_model(seed=5, method="value_residual", method_options={"mode": "learned"}, **MLA)
    attn = model.model.layers[1].self_attn
    attn.q_proj = torch.nn.Linear(64, 2 * attn.head_dim, bias=False)
    with pytest.raises(DepthAttnError, match="'value_residual' cannot run with the heads of an "
                                             "MLA layer split"):
        model(random_ids(1, 4))


def test_depth_attention_refuses_split_heads():
    attn = mla_model("latent").model.layers[1].self_attn
    with pytest.raises(DepthAttnError, match="cannot run with its heads split"):
        attn.depth_query(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 4))


def test_a_quantised_format_is_refused_for_the_latent_cache():
    with pytest.raises(DepthAttnError, match="kv_format 'int8' stores keys and values of one"):
        KVCache.for_model(mla_model("vanilla"), 1, 4, kv_format="int8")


def test_the_mla_quickstart_preset_keeps_80_numbers_per_token_and_layer():
    mla = ModelConfig.from_preset("mla-quickstart")
    assert mla.kv_cache_width == 80 and mla.head_dim == 48
    gqa = ModelConfig.from_preset("tiny", vocab_size=4096, hidden_size=128,
                                  intermediate_size=352, num_layers=8, num_heads=4,
                                  num_kv_heads=2, head_dim=32)
    assert gqa.kv_cache_width == 128


def set_absorbed(model, absorbed):
    for layer in model.model.layers:
        layer.self_attn.absorbed = absorbed


@pytest.mark.parametrize("rule", ["vanilla", "latent", "values", "latent_residual"])
def test_the_absorbed_form_equals_the_expanded_one(rule):
    """Forward (full and cached, float64 to 1e-12) and every gradient (float64, 1e-10)."""
    model = mla_model(rule, q_lora_rank=6, dtype=torch.float64)
    ids, mask = left_padded(2, 8, [0, 3], seed=4)
    results = {}
    for absorbed in (False, True):
        set_absorbed(model, absorbed)
        with torch.no_grad():
            full = model(ids, attention_mask=mask)
            cache = KVCache.for_model(model, 2, 8)
            cached = torch.cat([model(ids[:, :5], attention_mask=mask[:, :5], cache=cache)]
                               + [model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1],
                                        cache=cache) for t in range(5, 8)], 1)
        model.zero_grad(set_to_none=True)
        model.train()(ids, attention_mask=mask)[mask.bool()].logsumexp(-1).sum().backward()
        model.eval()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[absorbed] = full, cached, grads
    set_absorbed(model, None)
    model.zero_grad(set_to_none=True)
    (full0, cached0, grads0), (full1, cached1, grads1) = results[False], results[True]
    real = mask.bool()
    torch.testing.assert_close(full1[real], full0[real], rtol=0, atol=1e-12)
    torch.testing.assert_close(cached0[real], full0[real], rtol=0, atol=1e-12)
    torch.testing.assert_close(cached1[real], full0[real], rtol=0, atol=1e-12)
    assert grads0.keys() == grads1.keys() and grads0
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_decoding_takes_the_absorbed_form_and_training_the_expanded_one():
    attn = mla_model("latent").model.layers[0].self_attn
    # (d_nope + d_v)·d_c / (2·d_c − d_nope − d_v) = 18·12 / 6
    assert attn.absorbed_up_to == 36
    x = torch.randn(1, 36, 64)
    assert not attn.use_absorbed(x.requires_grad_())
    with torch.no_grad():
        assert attn.use_absorbed(x) and not attn.use_absorbed(torch.randn(1, 37, 64))
