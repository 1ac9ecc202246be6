"""Looped (recurrent-depth) models, docs/method.md §7: geometry, input injection, Depth-Attention over
applications, caches, serialization and test-time depth.

The geometry under test: 4 distinct layers, prelude p = 1, looped block k = 2 (layers 1, 2)
applied r = 3 times, coda c = 1 (layer 3): applications e = 0 .. 7 run layers
0, 1, 2, 1, 2, 1, 2, 3, and L_eff = 8 (Depth-Attention's default stride: 8 // 2 = 4).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from depthattn import CausalLM, KVCache
from depthattn.io import load_model, model_from_state, save_model
from depthattn.model.cache import StaticKVCache
from depthattn.model.rope import apply_rope
from depthattn.ops.depth_mix import depth_mix_reference
from tests.conftest import random_ids, randomize_, tiny_config

LOOP = {"num_layers": 4, "prelude_layers": 1, "loop_layers": 2, "loop_iterations": 3}
ORDER = [0, 1, 2, 1, 2, 1, 2, 3]  # the distinct layer of each application, from the text
ITERATION_STARTS = [1, 3, 5]  # applications where an iteration of the looped block begins
# S(e), listed by hand from the two rules (stride 4, window 0)
SOURCES = {
    "applications": [[], [0], [0], [0], [0], [0, 4], [0, 4], [0, 4]],
    # layer 1 at t = 1, 2 (e = 3, 5) reads e = 0 and its earlier iterations (1; 1, 3); layer 2
    # (e = 4, 6) reads 0 and (2; 2, 4); the rest keep the applications rule.
    "recurrent": [[], [0], [0], [0, 1], [0, 2], [0, 1, 3], [0, 2, 4], [0, 4]],
}


def looped_model(seed: int = 0, dtype=torch.float64, **overrides) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(tiny_config(**{**LOOP, **overrides}))
    randomize_(model, seed)
    return model.to(dtype).eval()


# --- an independent unrolled forward, written from the text ------------------------------
def unrolled_logits(model: CausalLM, ids: torch.Tensor, order: list[int],
                    sources: list[list[int]] | None, injection: str,
                    no_grad: frozenset[int] = frozenset()) -> torch.Tensor:
    """Apply model.model.layers[order[e]] for e = 0, 1, ...; at each e in ITERATION_STARTS
    inject the prelude's output (the state before the first iteration); with ``sources``, mix
    application e's value with depth_mix_reference over the listed earlier applications.
    Applications e in ``no_grad`` (their injection included) run under torch.no_grad()."""
    dec, cfg = model.model, model.config
    B, T = ids.shape
    x = dec.embed_tokens(ids)
    cos, sin = dec.rotary_emb(x, torch.arange(T).expand(B, T))
    stash: list[tuple[torch.Tensor, torch.Tensor]] = []
    prelude_output = None
    for e, i in enumerate(order):
        with torch.no_grad() if e in no_grad else contextlib.nullcontext():
            if e in ITERATION_STARTS:
                if prelude_output is None:
                    prelude_output = x
                if injection == "add":
                    x = x + prelude_output
                elif injection == "concat":
                    x = torch.cat([x, prelude_output], -1) @ dec.loop_injection.weight.T
            layer = dec.layers[i]
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_norm(attn.q_proj(h).view(B, T, cfg.num_heads, -1)).transpose(1, 2)
            k = attn.k_norm(attn.k_proj(h).view(B, T, cfg.num_kv_heads, -1)).transpose(1, 2)
            v = attn.v_proj(h).view(B, T, cfg.num_kv_heads, -1).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if sources is not None and sources[e]:
                v = depth_mix_reference(q, [stash[j][0] for j in sources[e]],
                                        [stash[j][1] for j in sources[e]], k, v)
            stash.append((k, v))
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(B, T, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(dec.norm(x))


@pytest.mark.parametrize("injection", ["none", "add", "concat"])
@pytest.mark.parametrize("rule", ["applications", "recurrent"])
def test_depth_attention_equals_the_unrolled_forward(rule, injection):
    model = looped_model(method="depth_attention", method_options={"sources": rule},
                         loop_injection=injection)
    assert model.model.cross_layer.sources == SOURCES[rule]
    ids = random_ids(2, 9)
    with torch.no_grad():
        expected = unrolled_logits(model, ids, ORDER, SOURCES[rule], injection)
        torch.testing.assert_close(model(ids), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("injection", ["none", "add", "concat"])
def test_vanilla_equals_the_unrolled_forward(injection):
    model = looped_model(loop_injection=injection)
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), unrolled_logits(model, ids, ORDER, None, injection),
                                   rtol=1e-10, atol=1e-10)


# --- geometry and parameters ---------------------------------------------------------------------
@pytest.mark.parametrize("method", ["vanilla", "depth_attention", "value_residual"])
def test_parameters_are_the_distinct_layers(method):
    plain = CausalLM(tiny_config(num_layers=4, method=method))
    looped = CausalLM(tiny_config(**LOOP, method=method))
    assert looped.config.num_applications == 8
    assert looped.state_dict().keys() == plain.state_dict().keys()
    assert looped.num_parameters() == plain.num_parameters()
    concat = CausalLM(tiny_config(**LOOP, method=method, loop_injection="concat"))
    D = plain.config.hidden_size
    assert concat.num_parameters() == plain.num_parameters() + 2 * D * D
    assert set(concat.state_dict()) - set(plain.state_dict()) == {"model.loop_injection.weight"}


def test_concat_adapter_starts_as_identity_on_the_state():
    model = CausalLM(tiny_config(**LOOP, loop_injection="concat"))
    W, D = model.model.loop_injection.weight, model.config.hidden_size
    torch.testing.assert_close(W[:, :D], torch.eye(D))
    assert not W[:, D:].any()


@pytest.mark.parametrize("method", ["vanilla", "depth_attention", "value_residual"])
@pytest.mark.parametrize("injection", ["none", "concat"])
def test_one_iteration_is_the_plain_model(method, injection):
    looped = looped_model(loop_iterations=1, method=method, loop_injection=injection)
    if injection == "concat":
        looped.model.loop_injection.reset_parameters()  # fresh: [I, 0]
    plain = CausalLM(tiny_config(num_layers=4, method=method)).double().eval()
    state = {k: v for k, v in looped.state_dict().items() if "loop_injection" not in k}
    plain.load_state_dict(state, strict=True)
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(looped(ids), plain(ids), rtol=1e-12, atol=1e-12)


def test_default_stride_follows_the_applications():
    config = tiny_config(**LOOP, method="depth_attention")
    assert config.method_options["stride"] == 4  # L_eff // 2, not num_layers // 2 = 2
    assert tiny_config(**{**LOOP, "loop_iterations": 5},
                       method="depth_attention").method_options["stride"] == 6


def test_hidden_states_one_per_application():
    model = looped_model()
    states: list[torch.Tensor] = []
    model.model.hidden_state.register_forward_hook(lambda module, args, out: states.append(out))
    with torch.no_grad():
        out = model.model(random_ids(1, 5), output_hidden_states=True)
    assert len(states) == 8 + 1
    torch.testing.assert_close(states[-1], out)


def test_activation_checkpointing_per_application_gives_the_same_gradients():
    ids = random_ids(2, 7)
    grads = []
    for checkpointing in (False, True):
        model = looped_model(method="depth_attention", loop_injection="concat").train()
        model.model.activation_checkpointing = checkpointing
        model.loss(ids[:, :-1], ids[:, 1:]).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-10, atol=1e-12, msg=name)


# --- methods: which run looped --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["denseformer", "hyper_connections", "mhc", "attnres",
                                    "block_attnres", "muddformer", "depth_attention+mhc"])
def test_residual_stream_methods_refuse_a_looped_model(method):
    with pytest.raises(ValueError, match="cannot run a looped model"):
        tiny_config(**LOOP, method=method)


@pytest.mark.parametrize("mode", ["fixed", "learned", "gated"])
def test_value_residual_runs_looped(mode):
    model = looped_model(method="value_residual", method_options={"mode": mode})
    ids = random_ids(2, 6)
    with torch.no_grad():
        assert torch.isfinite(model(ids)).all()
    if mode != "fixed":
        with pytest.raises(ValueError, match="without a prelude"):
            tiny_config(**{**LOOP, "prelude_layers": 0}, method="value_residual",
                        method_options={"mode": mode})


# --- decoding --------------------------------------------------------------------------------------
DECODING_CASES = [("depth_attention", {"sources": "recurrent"}, "concat"),
                  ("depth_attention", {}, "add"), ("value_residual", {}, "none"),
                  ("vanilla", {}, "none")]


@pytest.mark.parametrize("method,options,injection", DECODING_CASES)
@pytest.mark.parametrize("cache_class", [KVCache, StaticKVCache])
def test_cached_decoding_equals_the_full_forward(method, options, injection, cache_class):
    model = looped_model(method=method, method_options=options, loop_injection=injection)
    ids = random_ids(2, 10)
    with torch.no_grad():
        full = model(ids)
        for chunks in ([1] * 10, [4, 1, 3, 2]):
            cache = cache_class.for_model(model, batch_size=2, max_len=16)
            assert len(cache.keys) == 8  # one slot per application
            pieces, start = [], 0
            for n in chunks:
                pieces.append(model(ids[:, start:start + n], cache=cache))
                start += n
            torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-10, atol=1e-10)


def test_cache_bytes_follow_the_applications():
    looped = looped_model(dtype=torch.float32)
    plain = CausalLM(tiny_config(num_layers=4))
    assert KVCache.for_model(looped, 1).nbytes == 2 * KVCache.for_model(plain, 1).nbytes
    from depthattn.analysis.cost import backbone_cost

    cost, config = backbone_cost(looped.config), looped.config
    assert cost.kv_cache_per_token == 2 * 8 * config.num_kv_heads * config.head_dim
    concat = tiny_config(**LOOP, loop_injection="concat")
    assert backbone_cost(concat).params == CausalLM(concat).num_parameters()


def test_hugging_face_generate_with_and_without_cache():
    from depthattn.hf import DepthAttnForCausalLM
    from depthattn.hf.cache import DepthAttnCache

    core = looped_model(dtype=torch.float32, method="depth_attention",
                        method_options={"sources": "recurrent"}, loop_injection="concat")
    model = DepthAttnForCausalLM.from_core(core).eval()
    assert len(DepthAttnCache(model.config).layers) == 8
    ids = random_ids(2, 5)
    options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **options)
        uncached = model.generate(ids, use_cache=False, **options)
        static = model.generate(ids, cache_implementation="static", **options)
    torch.testing.assert_close(cached, uncached)
    torch.testing.assert_close(static, uncached)
    assert cached[:, 5:].unique().numel() > 1


HF_DECODING_CASES = [("vanilla", {}, "add"), ("value_residual", {}, "concat"),
                     ("depth_attention", {"sources": "applications"}, "add"),
                     ("depth_attention", {"sources": "applications"}, "concat"),
                     ("depth_attention", {"sources": "recurrent"}, "add"),
                     ("depth_attention", {"sources": "recurrent"}, "concat")]


@pytest.mark.parametrize("method,options,injection", HF_DECODING_CASES,
                         ids=lambda v: v.get("sources", "") if isinstance(v, dict) else v)
def test_hugging_face_cached_logits_equal_the_full_forward(method, options, injection):
    """Greedy generate agreeing with and without the cache only checks each step's argmax: here
    every step's logits through DepthAttnForCausalLM and its DepthAttnCache (one slot per
    application, L_eff = 8) equal one full forward's. In float32 the two differ only by the
    summation order of differently shaped matmuls (at most 2.5e-6 measured, on logits up
    to 2.7): atol 1e-5, rtol 0."""
    from depthattn.hf import DepthAttnForCausalLM
    from depthattn.hf.cache import DepthAttnCache

    core = looped_model(dtype=torch.float32, method=method, method_options=options,
                        loop_injection=injection)
    model = DepthAttnForCausalLM.from_core(core).eval()
    ids = random_ids(2, 10)
    cache = DepthAttnCache(model.config)
    assert len(cache.layers) == 8
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        steps = [model(ids[:, :4], past_key_values=cache).logits]  # the prompt, then one by one
        steps += [model(ids[:, t:t + 1], past_key_values=cache).logits for t in range(4, 10)]
    assert cache.get_seq_length() == 10
    torch.testing.assert_close(steps[0], full[:, :4], rtol=0, atol=1e-5)
    for t, logits in enumerate(steps[1:], start=4):
        torch.testing.assert_close(logits, full[:, t:t + 1], rtol=0, atol=1e-5,
                                   msg=lambda m, t=t: f"position {t}: {m}")


# --- serialization and test-time depth -------------------------------------------------------------
def test_core_save_load_and_test_time_depth(tmp_path):
    model = looped_model(dtype=torch.float32, method="depth_attention", loop_injection="concat")
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    ids = random_ids(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))
        loaded.set_loop_iterations(5)
        assert loaded.config.num_applications == 12
        deeper = CausalLM(dataclasses.replace(model.config, loop_iterations=5)).eval()
        deeper.load_state_dict(model.state_dict(), strict=True)
        torch.testing.assert_close(loaded(ids), deeper(ids))
        assert not torch.allclose(loaded(ids), model(ids))
        cache = KVCache.for_model(loaded, 2)
        assert len(cache.keys) == 12
        torch.testing.assert_close(torch.cat([loaded(ids[:, :4], cache=cache),
                                              loaded(ids[:, 4:], cache=cache)], 1), loaded(ids))


def test_hugging_face_save_load_and_test_time_depth(tmp_path):
    from depthattn.hf import DepthAttnForCausalLM

    core = looped_model(dtype=torch.float32, method="depth_attention", loop_injection="concat")
    DepthAttnForCausalLM.from_core(core).save_pretrained(tmp_path / "hf")
    loaded = DepthAttnForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = random_ids(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, core(ids))
        deeper = DepthAttnForCausalLM.from_pretrained(tmp_path / "hf", loop_iterations=5).eval()
        assert deeper.core_config.num_applications == 12
        loaded.set_loop_iterations(5)
        torch.testing.assert_close(loaded(ids).logits, deeper(ids).logits)


def test_a_saved_looped_model_exports_to_hugging_face(tmp_path):
    """`depthattn convert --from-run` on a looped model folder: the adapter and the loop
    geometry travel, and the folder loads with transformers' Auto class."""
    from transformers import AutoModelForCausalLM

    from depthattn.hf.export import export_run

    core = looped_model(dtype=torch.float32, method="depth_attention", loop_injection="concat",
                        method_options={"sources": "recurrent"})
    save_model(core, tmp_path / "m")
    export_run(tmp_path / "m", tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert loaded.core_config == core.config
    ids = random_ids(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, core(ids), rtol=0, atol=1e-6)


def test_missing_concat_adapter_is_an_error(tmp_path):
    from depthattn.hf import DepthAttnForCausalLM

    model = looped_model(dtype=torch.float32)  # injection none: no adapter
    state = dict(model.state_dict())
    concat = dataclasses.replace(model.config, loop_injection="concat")
    with pytest.raises(ValueError, match="model.loop_injection.weight"):
        model_from_state(concat, state)
    DepthAttnForCausalLM.from_core(model).save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="loop_injection"):
        DepthAttnForCausalLM.from_pretrained(tmp_path / "hf", loop_injection="concat")


def test_depth_map_rows_are_applications():
    from depthattn.analysis.depth_maps import depth_map

    model = looped_model(dtype=torch.float32, method="depth_attention",
                         method_options={"sources": "recurrent"})
    ids = random_ids(2, 6)
    depth = depth_map(model, [(ids, ids)])
    assert depth.mean_weight.shape == (2, 8, 9)
    assert depth.sources == {e: s for e, s in enumerate(SOURCES["recurrent"]) if s}
