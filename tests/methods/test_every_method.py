"""The battery every registered cross-layer method must pass (a new method is one file plus
its own tests; this file covers it automatically): forward/backward, activation checkpointing
equal to the plain backward, cached decoding equal to the full forward, batch independence under
left padding, save/load, Qwen3 names for the backbone, the vanilla-sized KV cache, the
closed-form ``cost()`` against the real parameter count, option validation, and — for the
methods that claim it — being the vanilla decoder at initialisation.

A new method must also be entered in VANILLA_AT_INIT or NOT_VANILLA_AT_INIT below (a test
fails until it is): whether a fresh model is vanilla is the method's claim, not the battery's."""

from __future__ import annotations

import re

import pytest
import torch

from depthattn import CausalLM, KVCache, load_model, save_model
from depthattn.methods import get_method, method_names, method_options
from tests.conftest import random_ids, tiny_config, tiny_model

# Every registered method, and combinations of an in-attention with a residual-stream method.
METHODS = method_names() + ["depth_attention+denseformer", "depth_attention+mhc",
                            "depth_attention+muddformer"]
QWEN3_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")

# The methods whose module docstring says a freshly initialised model is the vanilla decoder:
# method -> (tiny_config overrides that make it so, atol on the logits against vanilla with the
# same backbone weights, float64).
VANILLA_AT_INIT = {
    "vanilla": ({}, 0.0),
    # α_{i,i} = 1, the others 0: every DWA returns the latest block output, exactly
    "denseformer": ({}, 0.0),
    # W2 = 0, b = "current only": every stream is the latest output, and the key/value pre-norms
    # (gain 1) equal the block's own (gain 1, as initialised)
    "muddformer": ({}, 1e-12),
    # every stream equals the vanilla residual; the readout sums the n streams (n × vanilla),
    # which the final RMSNorm undoes up to its eps (~1e-6 at eps = 1e-6), so eps → 0 here
    "hyper_connections": ({"rms_norm_eps": 1e-30}, 1e-12),
    # vanilla only with the α gates closed; the fp32 maps leave ~1e-7
    "mhc": ({"method_options": {"alpha_init": 0.0}}, 1e-6),
    # uniform means of sources that sum to the vanilla residual: vanilla up to the next
    # RMSNorm's eps, so eps → 0 here
    "block_attnres": ({"rms_norm_eps": 1e-30}, 1e-12),
}
# Not vanilla at initialisation, by design: attnres favours the running residual but mixes in
# the snapshots; value_residual starts at the fixed 0.5/0.5 value mix; depth_attention has no
# parameters and mixes from the first step.
NOT_VANILLA_AT_INIT = {"attnres", "value_residual", "depth_attention"}


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


@pytest.mark.parametrize("method", METHODS)
def test_activation_checkpointing_equals_the_plain_backward(method):
    """Recomputing each block in backward must read what the first pass read (streams, depth
    stash, maps riding on the stream): loss and every gradient as without checkpointing."""
    runs = []
    for checkpointing in (False, True):
        model = tiny_model(seed=7, method=method, dtype=torch.float64).train()
        model.model.activation_checkpointing = checkpointing
        calls = []
        for block in model.model.layers:
            block.register_forward_pre_hook(lambda module, args: calls.append(1))
        loss = model.loss(random_ids(2, 9, seed=7), random_ids(2, 9, seed=8))
        loss.backward()
        # with checkpointing every block really runs again in backward
        assert len(calls) == (2 if checkpointing else 1) * model.config.num_layers
        runs.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (plain_loss, plain_grads), (loss, grads) = runs
    torch.testing.assert_close(loss, plain_loss, atol=1e-12, rtol=1e-12)
    assert grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert grad is not None, name
        torch.testing.assert_close(grads[name], grad, atol=1e-12, rtol=1e-12, msg=name)


@pytest.mark.parametrize("geometry", [
    {},  # TINY: 6 layers, GQA
    {"num_layers": 7, "num_heads": 8, "num_kv_heads": 1, "head_dim": 8, "tie_embeddings": True},
], ids=["tiny", "7-layers-MQA-tied"])
@pytest.mark.parametrize("method", METHODS)
def test_cost_counts_the_parameters_the_method_really_adds(method, geometry):
    config = tiny_config(method=method, **geometry)
    added = CausalLM(config).num_parameters() - CausalLM(tiny_config(**geometry)).num_parameters()
    assert get_method(method).cost(config, method_options(config)).added_params == added


def test_every_method_says_whether_it_starts_vanilla():
    assert not set(VANILLA_AT_INIT) & NOT_VANILLA_AT_INIT
    assert sorted(set(VANILLA_AT_INIT) | NOT_VANILLA_AT_INIT) == method_names()


def fresh_and_vanilla(method: str, overrides: dict) -> tuple[CausalLM, CausalLM]:
    """A freshly initialised model of ``method`` and the vanilla model with its backbone weights.

    The backbone's matrices are then re-drawn larger (N(0, 0.08²), the same in both), so that any
    deviation from vanilla shows in the logits; the norm gains keep their initial 1 (MUDDFormer's
    claim needs its own key/value pre-norms to equal the block's)."""
    torch.manual_seed(0)
    model = CausalLM(tiny_config(method=method, **overrides)).double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if not name.startswith("model.cross_layer.") and p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.08)
    geometry = {k: v for k, v in overrides.items() if k != "method_options"}
    vanilla = CausalLM(tiny_config(**geometry)).double().eval()
    missing, unexpected = vanilla.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("model.cross_layer.") for k in unexpected)
    return model, vanilla


@pytest.mark.parametrize("method", sorted(VANILLA_AT_INIT))
def test_fresh_model_is_vanilla_where_the_method_claims_it(method):
    overrides, atol = VANILLA_AT_INIT[method]
    model, vanilla = fresh_and_vanilla(method, overrides)
    ids = random_ids(2, 11, seed=6)
    with torch.no_grad():
        logits, expected = model(ids), vanilla(ids)
    assert expected.abs().max() > 1  # large enough logits for a deviation to show
    torch.testing.assert_close(logits, expected, atol=atol, rtol=0)


@pytest.mark.parametrize("method", sorted(NOT_VANILLA_AT_INIT))
def test_fresh_model_is_not_vanilla_where_the_method_says_so(method):
    model, vanilla = fresh_and_vanilla(method, {})
    ids = random_ids(2, 11, seed=6)
    with torch.no_grad():
        assert (model(ids) - vanilla(ids)).abs().max() > 1e-3
