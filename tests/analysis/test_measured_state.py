"""The closed-form state accounting against what a real forward keeps
(``depthattn.analysis.measured_state``): for every registered method (and a few non-default
options), on GQA and on MLA models, the in-flight depth state measured between sublayers equals
``MethodCost.inflight_state_per_token``, and what a decoding loop carries from step to step grows
by the KV cache per token — plus the cache's padding record, one bool per token, for every method
alike — and, under Depth-Attention's MLA ``values`` rule, by c̃ too: d_c per token and layer,
its ``persistent_state_per_token``."""

from __future__ import annotations

import pytest

from depthattn.analysis.cost import cost_report
from depthattn.analysis.measured_state import (
    inflight_state_per_token,
    measure_inflight_state,
    measure_persistent_state,
    persistent_state_per_token,
)
from depthattn.methods import method_names
from tests.conftest import TINY_MLA, tiny_model

VARIANTS = [(method, {}) for method in method_names()] + [
    ("depth_attention", {"stride": 1}),
    ("value_residual", {"mode": "gated"}),
    ("denseformer", {"dilation": 2, "period": 2}),
    ("denseformer", {"period": 2}),
    ("attnres", {"block_size": 4}),  # last snapshot after the last layer: it is P
    ("attnres", {"block_size": 8}),  # last snapshot after layer 3: P is distinct
    ("block_attnres", {"block_size": 8, "final_aggregator": False}),  # a shorter last block
    ("depth_attention+mhc", {}),
]


def variant_id(variant: tuple[str, dict]) -> str:
    method, options = variant
    return method + "".join(f"-{k}={v}" for k, v in options.items())


# MLA models (docs/method.md §9): every method but muddformer (refused), with the values rule and
# the learned latent residual; gated value residual has no MLA form
MLA_VARIANTS = [(method, options) for method, options in VARIANTS
                if method != "muddformer" and options.get("mode") != "gated"] + [
    ("depth_attention", {"mla_mix": "values"}),
    ("depth_attention", {"mla_mix": "values", "stride": 1}),
    ("value_residual", {"mode": "learned"}),
    ("depth_attention+mhc", {"depth_attention": {"mla_mix": "values"}}),
]
CASES = [(variant, {}) for variant in VARIANTS] + [(variant, TINY_MLA) for variant in MLA_VARIANTS]
CASE_IDS = [("mla-" if geometry else "") + variant_id(variant) for variant, geometry in CASES]
LOOPED = dict(prelude_layers=1, loop_layers=2, loop_iterations=3)  # L_eff = 1 + 2·3 + 3 = 10


@pytest.mark.parametrize("variant, geometry", CASES, ids=CASE_IDS)
def test_measured_inflight_state_equals_the_accounting(variant, geometry):
    method, options = variant
    model = tiny_model(method=method, method_options=options, **geometry)
    report = cost_report(model.config, dtype="fp32")
    measured = measure_inflight_state(model)
    assert measured.per_token == report.added.inflight_state_per_token, \
        (measured.widest, dict(measured.parts))
    assert measured.vs_kv_cache(report.backbone.kv_cache_per_token) == report.inflight_vs_kv_cache


@pytest.mark.parametrize("variant, geometry", CASES, ids=CASE_IDS)
def test_persistent_state_is_the_kv_cache(variant, geometry):
    method, options = variant
    model = tiny_model(method=method, method_options=options, **geometry)
    config = model.config
    report = cost_report(config, dtype="fp32")
    kv = report.kv_cache_bytes_per_token
    measured = measure_persistent_state(model)
    # the values rule's cache keeps c̃ beside the vanilla MLA entry: d_c per token and layer
    values_rule = config.latent_values_cached
    assert report.added.persistent_state_per_token == (6 * 32 if values_rule else 0)
    assert measured.kv_bytes_per_token == kv + 4 * report.added.persistent_state_per_token
    # nothing else grows with the context: no method keeps anything of its own across steps
    heads, key_width, value_width = config.kv_cache_shape
    expected = {"cache.keys": 6 * heads * key_width * 4,
                "cache.values": 6 * heads * value_width * 4,
                "cache.record.valid": 1.0}  # bool (B, length)
    assert dict(measured.parts) == {path: b for path, b in expected.items() if b}
    if not geometry:
        assert expected["cache.keys"] == expected["cache.values"] == kv / 2
    elif values_rule:  # keys: the vanilla entry [c ; k^R]; values: c̃
        assert (expected["cache.keys"], expected["cache.values"]) == (kv, 6 * 32 * 4)
    else:  # one entry per token and layer, as the key; the value slot is empty
        assert expected["cache.keys"] == kv == 6 * (32 + 8) * 4
    assert measured.beyond_kv_bytes_per_token == 1.0


@pytest.mark.parametrize("method", ["depth_attention", "value_residual"])
def test_looped_models_too(method):
    model = tiny_model(method=method, **LOOPED)
    report = cost_report(model.config, dtype="fp32")
    assert report.backbone.kv_cache_per_token == 2 * 10 * 2 * 16  # a slot per application
    assert inflight_state_per_token(model) == report.added.inflight_state_per_token
    assert persistent_state_per_token(model) == report.kv_cache_bytes_per_token + 1


def test_the_depth_stash_is_the_tokens_own_kv_cache_entries():
    """What Depth-Attention keeps for later layers is exactly what its layers hand to the cache:
    the (k_j, ṽ_j) of the applications some later layer reads, and nothing more."""
    for stride, stashed in ((3, [0, 3]), (1, [0, 1, 2, 3, 4])):
        model = tiny_model(method="depth_attention", method_options={"stride": stride})
        assert sorted(model.model.cross_layer.read_later) == stashed
        measured = measure_inflight_state(model)
        assert measured.per_token == 64  # d: the residual
        assert measured.kv_entries_per_token == len(stashed) * 2 * 2 * 16  # (k, ṽ): 2·H_kv·d_h
    assert measure_inflight_state(tiny_model(method="vanilla")).kv_entries_per_token == 0


def test_the_values_rule_stashes_a_mixed_rotary_key_no_cache_slot_holds():
    """Under the MLA ``values`` rule a layer caches its own entry [c ; k^R] and c̃, the first
    d_c numbers of its mixed entry; the stash keeps the whole mixed entry [c̃ ; k̃^R] for later
    layers. Its k̃^R (d_rope = 8) is in no cache slot: in flight beyond the cache, counted
    element by element (layer 0 mixes nothing: its stashed entry is its cached key)."""
    model = tiny_model(method="depth_attention", method_options={"mla_mix": "values"},
                       **TINY_MLA)
    measured = measure_inflight_state(model)
    assert sorted(model.model.cross_layer.read_later) == [0, 3]
    assert dict(measured.parts) == {"stream": 64, "context.depth_stash.3": 8}
    assert measured.kv_entries_per_token == 40 + 32  # e_0 (as layer 0's key) and c̃_3
    latent = measure_inflight_state(tiny_model(method="depth_attention", **TINY_MLA))
    assert dict(latent.parts) == {"stream": 64}
    assert latent.kv_entries_per_token == 2 * 40  # ẽ_0 and ẽ_3, each a layer's cached key


def test_measurement_does_not_depend_on_batch_or_length():
    model = tiny_model(method="denseformer", method_options={"period": 2})
    assert len({measure_inflight_state(model, batch_size=b, seq_len=t).per_token
                for b, t in ((1, 1), (2, 8), (3, 5))}) == 1
    persistent = {measure_persistent_state(model, contexts=c, batch_size=b).bytes_per_token
                  for c, b in (((2, 3), 1), ((8, 24), 2), ((5, 40), 3))}
    assert persistent == {cost_report(model.config, dtype="fp32").kv_cache_bytes_per_token + 1}


def test_bad_arguments_name_the_problem():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"seq_len \(0\)"):
        measure_inflight_state(model, seq_len=0)
    with pytest.raises(ValueError, match=r"contexts\[1\] \(8\).*contexts\[0\] = 8"):
        measure_persistent_state(model, contexts=(8, 8))
    with pytest.raises(ValueError, match=r"contexts\[1\] \(65\) exceeds max_seq_len \(64\)"):
        measure_persistent_state(model, contexts=(8, 65))
