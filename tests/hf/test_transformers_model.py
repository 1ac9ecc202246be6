"""``DepthAttnForCausalLM`` as transformers' model tests and its clients (TRL, vLLM's Transformers
backend) use it: one named test per failure transformers' suite and TRL's ``SFTTrainer`` found.

- attention through transformers' interface: ``eager`` honoured and returning weights
  (``output_attentions``), a registered function called with the mixed values;
- a base model class (``DepthAttnModel``, ``last_hidden_state``, ``use_cache``) and Qwen3's heads;
- ``shift_labels``; transformers' ``GradientCheckpointingLayer``; 4-D masks;
- padding-free (packed) rows: each sequence's logits equal those it gets alone, for every
  method, under sdpa and eager;
- the caches are transformers' ``DynamicCache`` / ``StaticCache``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AttentionInterface,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DynamicCache,
    Qwen3ForCausalLM,
    Qwen3Model,
    StaticCache,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils.output_capturing import OutputRecorder

from depthattn import CausalLM
from depthattn.hf import DepthAttnConfig, DepthAttnForCausalLM, DepthAttnModel
from depthattn.hf.cache import DepthAttnCache, DepthAttnStaticCache
from depthattn.methods.registry import method_names
from tests.conftest import randomize_, tiny_config
from tests.hf.test_hf_fidelity import qwen3_and_ours
from tests.model.test_decoder import hf_config

# float32 logits of size ~5 through differently shaped attention (eager vs sdpa, packed vs
# alone): ~2e-5 apart (a broken mask moves them by ~1)
ATOL = 5e-5
LOOPED = dict(prelude_layers=1, loop_layers=2, loop_iterations=2, num_layers=5)


def model_for(method: str = "vanilla", attn: str = "sdpa", seed: int = 0,
              **overrides) -> DepthAttnForCausalLM:
    torch.manual_seed(seed)
    core = CausalLM(tiny_config(method=method, **overrides))
    randomize_(core, seed, std=0.2)
    model = DepthAttnForCausalLM.from_core(core.eval()).eval()
    model.set_attn_implementation(attn)
    return model


def ids(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- attention through transformers' interface ----------------------------------------------


def test_eager_attention_returns_qwen3s_weights():
    """output_attentions=True was refused; with eager it gives Qwen3's per-layer weights."""
    qwen, ours = qwen3_and_ours(attn="eager")
    ours.set_attn_implementation("eager")
    x = ids(3, 9)
    with torch.no_grad():
        expected = qwen(x, output_attentions=True).attentions
        got = ours(x, output_attentions=True).attentions
    assert len(got) == len(expected) == qwen.config.num_hidden_layers
    for a, b in zip(got, expected):
        assert a.shape == (3, qwen.config.num_attention_heads, 9, 9)
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize("method", ["vanilla", "depth_attention", "hyper_connections"])
def test_attn_implementation_eager_is_honoured(method):
    """"eager" was accepted and ignored: now it runs (weights come back), and its logits are
    sdpa's, with and without left padding, with a cache."""
    sdpa, eager = model_for(method, "sdpa"), model_for(method, "eager")
    x = ids(3, 8)
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    with torch.no_grad():
        a = sdpa(x, attention_mask=mask)
        b = eager(x, attention_mask=mask, output_attentions=True)
        step = eager(x[:, -1:], attention_mask=torch.cat([mask, mask[:, -1:]], 1),
                     past_key_values=b.past_key_values if hasattr(b, "past_key_values")
                     and b.past_key_values is not None else b.cache)
    assert all(w is not None for w in b.attentions)
    torch.testing.assert_close(b.logits[mask.bool()], a.logits[mask.bool()], rtol=0, atol=ATOL)
    assert step.logits.shape == (3, 1, 128)
    # a padding key gets no weight from any real query
    assert float(b.attentions[0][1, :, 3:, :3].abs().max()) == 0.0


def test_a_registered_attention_function_is_called_with_the_mixed_values():
    """What a serving engine's attention function receives (and would cache) is ṽ, the value
    Depth-Attention mixed: the same tensor our own cache stores."""
    seen = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((module.layer_idx, value.clone()))
        return AttentionInterface()["sdpa"](module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("depthattn_spy", spy)
    model = model_for("depth_attention", "depthattn_spy")
    x = ids(2, 6)
    with torch.no_grad():
        out = model(x, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert [e for e, _ in seen] == list(range(6))
    for e, value in seen:
        torch.testing.assert_close(value, cache.layers[e].values, rtol=0, atol=0)
    # and the logits are sdpa's: the function is the only difference
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model_for("depth_attention")(x).logits,
                                   rtol=0, atol=0)


# --- hidden states through transformers' capture_outputs -------------------------------------

# transformers 5.25 counts negative output_hidden_states indices back from the number of states
# (its OutputRecorder's num_hidden_layers_key); 5.19 takes indices as given: -1 selects nothing
NEGATIVE_INDICES = "num_hidden_layers_key" in OutputRecorder.__dataclass_fields__


@pytest.mark.parametrize("method, overrides", [("vanilla", LOOPED), ("hyper_connections", {})],
                         ids=["looped", "hyper_connections"])
def test_hidden_states_selected_by_index_are_those_of_the_full_list(method, overrides):
    """The L_eff + 1 states are the embeddings, the method's readout after each application
    (not the block's output: hyper-connections' is n streams) and the final-normed output;
    indices select among them, -1 counting back from L_eff + 1 (a looped model's 8, not its
    num_hidden_layers + 1 = 6)."""
    model = model_for(method, **overrides)
    readouts = []  # (B, T, D): each application's output, read out by the method
    for layer in model.model.layers:
        layer.register_forward_hook(
            lambda block, args, out: readouts.append(args[1].final_hidden(out, args[2])))
    x = ids()
    with torch.no_grad():
        full = model(x, output_hidden_states=True).hidden_states
        expected = [model.model.embed_tokens(x), *readouts[:-1], model.model.norm(readouts[-1])]
        picked = model(x, output_hidden_states=[0, 2, -1]).hidden_states
    assert len(full) == len(picked) == model.config.num_applications + 1
    for a, b in zip(full, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    kept = {0, 2} | ({len(full) - 1} if NEGATIVE_INDICES else set())
    for i, (a, b) in enumerate(zip(picked, full)):
        if i in kept:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        else:
            assert a is None, i


# --- the base model and the heads -------------------------------------------------------------


def test_base_model_is_depthattn_model_returning_last_hidden_state():
    """``model.base_model`` was the core Decoder (no use_cache, no last_hidden_state): TRL
    calls ``model.base_model(..., use_cache=False).last_hidden_state``."""
    model = model_for("depth_attention")
    assert isinstance(model.base_model, DepthAttnModel)
    x = ids()
    with torch.no_grad():
        out = model.base_model(input_ids=x, use_cache=False)
        logits = model(x).logits
    assert out.last_hidden_state.shape == (2, 7, 64)
    torch.testing.assert_close(model.lm_head(out.last_hidden_state), logits, rtol=0, atol=0)
    assert (getattr(out, "cache", None) or getattr(out, "past_key_values", None)) is None


def test_base_model_keeps_qwen3models_parameter_names():
    qwen = Qwen3Model(hf_config())
    ours = AutoModel.from_config(
        DepthAttnForCausalLM.from_core(CausalLM(tiny_config(num_layers=4, vocab_size=160,
                                                            hidden_size=64))).config)
    assert isinstance(ours, DepthAttnModel)
    assert sorted(k for k in ours.state_dict() if "rotary" not in k) == \
        sorted(k for k in qwen.state_dict() if "rotary" not in k)


def test_replacing_a_module_replaces_it_for_the_decoder_too():
    """One module dict: a module swapped on DepthAttnModel (a serving engine swaps layers) is
    the one the core decoder runs."""
    model = model_for()
    new = torch.nn.Embedding(128, 64)
    model.model.embed_tokens = new
    assert model.model.decoder.embed_tokens is new


@pytest.mark.parametrize("auto_class, head, field, shape", [
    (AutoModelForSequenceClassification, "score", "logits", (3, 3)),
    (AutoModelForTokenClassification, "score", "logits", (3, 6, 3)),
    (AutoModelForQuestionAnswering, "qa_outputs", "start_logits", (3, 6)),
])
def test_task_heads_load_from_a_folder(tmp_path, auto_class, head, field, shape):
    """Qwen3's heads: AutoModelFor* on a depthattn folder raised "Unrecognized configuration
    class"; now it loads the decoder's weights and adds its head."""
    model = model_for("depth_attention")
    model.config.pad_token_id = 0
    model.save_pretrained(tmp_path)
    loaded = auto_class.from_pretrained(tmp_path, num_labels=3).eval()
    assert hasattr(loaded, head)
    torch.testing.assert_close(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    x = ids(3, 6)
    with torch.no_grad():
        out = getattr(loaded(x), field)
    assert tuple(out.shape) == shape


def test_sequence_classification_reads_the_last_real_token():
    """Right padding: the score of the last non-pad token, as Qwen3's head."""
    model = model_for("depth_attention")
    model.config.pad_token_id, model.config.num_labels = 0, 2
    head = AutoModelForSequenceClassification.from_config(model.config).eval()
    head.model.load_state_dict(model.model.state_dict())
    x = ids(1, 5)
    padded = torch.cat([x, torch.zeros(1, 2, dtype=torch.long)], 1)
    with torch.no_grad():
        alone = head(x).logits
        right = head(padded, attention_mask=(padded != 0).long()).logits
    torch.testing.assert_close(right, alone, rtol=0, atol=ATOL)


# --- loss, checkpointing, masks ------------------------------------------------------------------


def test_shift_labels_gives_the_labels_loss():
    """``shift_labels`` (already shifted, as context-parallel trainers pass them) was rejected."""
    model = model_for("depth_attention")
    x = ids()
    shifted = torch.cat([x[:, 1:], torch.full((2, 1), -100)], 1)
    with torch.no_grad():
        expected = model(x, labels=x).loss
        got = model(x, shift_labels=shifted).loss
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def gradients(model: DepthAttnForCausalLM) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the loss on a fixed batch."""
    model.zero_grad()
    x = ids()
    model(x, labels=x).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_gradient_checkpointing_is_transformers_own(method):
    """Blocks are ``GradientCheckpointingLayer``s, so transformers' checks and every_n_layers
    apply; the gradients equal those without checkpointing."""
    model = model_for(method).train()
    assert all(isinstance(layer, GradientCheckpointingLayer) for layer in model.model.layers)
    plain = gradients(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    checkpointed = gradients(model)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-6)
    model.gradient_checkpointing_disable()
    assert not any(layer.gradient_checkpointing for layer in model.model.layers)


@pytest.mark.parametrize("method", method_names())
def test_reentrant_checkpointing_gives_the_plain_gradients_or_is_refused(method):
    """Reentrant checkpointing differentiates through a block's tensor arguments: methods whose
    stream is a dataclass of tensors get it passed as tensors, and their gradients equal the
    plain ones; methods that read the depth stash are refused by name."""
    model = model_for(method).train()
    if model.model.cross_layer.reads_context_activations:
        with pytest.raises(ValueError, match="use_reentrant=True is not supported"):
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": True})
        return
    plain = gradients(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    checkpointed = gradients(model)
    assert plain.keys() == checkpointed.keys() == {n for n, _ in model.named_parameters()}
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_4d_masks_are_used_as_given(attn):
    """4-D masks were refused. A block-diagonal one over two concatenated sequences gives each
    the logits it gets alone; bool (True = attend) and float (added) masks alike."""
    model = model_for("depth_attention", attn)
    a, b = ids(1, 4, seed=1), ids(1, 5, seed=2)
    row = torch.cat([a, b], 1)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    same = torch.zeros(9, 9, dtype=torch.bool)
    same[:4, :4] = same[4:, 4:] = True
    mask = (causal & same)[None, None]
    positions = torch.cat([torch.arange(4), torch.arange(5)])[None]
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        alone = torch.cat([model(a).logits, model(b).logits], 1)
        for m in (mask, additive):
            got = model(row, attention_mask=m, position_ids=positions).logits
            torch.testing.assert_close(got, alone, rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="4-D attention_mask must have shape"):
        model(row, attention_mask=mask[..., :8])


# Every registered method (the combinations are covered by their parts) and a looped model.
PACKED_CASES = [dict(method=m) for m in method_names()] + [dict(method="depth_attention",
                                                                **LOOPED)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("case", PACKED_CASES, ids=lambda c: c["method"] + (
    "-looped" if "loop_layers" in c else ""))
def test_packed_rows_give_each_sequence_its_own_logits(case, attn):
    """Padding-free batches (``DataCollatorWithFlattening``): sequences of 5, 3 and 4 tokens
    in one row, position_ids restarting at 0, longer in all than max_seq_len (10): each
    sequence's logits are those it gets alone."""
    model = model_for(attn=attn, max_seq_len=10, **case)
    parts = [ids(1, n, seed=n) for n in (5, 3, 4)]
    row = torch.cat(parts, 1)
    positions = torch.cat([torch.arange(p.shape[1]) for p in parts])[None]
    with torch.no_grad():
        alone = torch.cat([model(p).logits for p in parts], 1)
        packed = model(row, position_ids=positions, cu_seq_lens_q=torch.tensor([0, 5, 8, 12]),
                       cu_seq_lens_k=torch.tensor([0, 5, 8, 12]), max_length_q=5,
                       max_length_k=5).logits
    torch.testing.assert_close(packed, alone, rtol=0, atol=ATOL)


def test_positions_past_max_position_embeddings_run_as_in_qwen3():
    """max_position_embeddings is the trained context (scaled RoPE reads it), not a limit:
    Qwen3 runs past it, and so does the Hugging Face model (a core CausalLM refuses)."""
    short, longer = model_for(max_seq_len=10), model_for(max_seq_len=32)
    longer.load_state_dict(short.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(short(ids(1, 11)).logits, longer(ids(1, 11)).logits)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        CausalLM(tiny_config(max_seq_len=10))(ids(1, 11))


def test_cached_packed_rows_are_refused():
    model = model_for()
    packed = torch.cat([torch.arange(4), torch.arange(3)])[None]
    with pytest.raises(ValueError, match="packed in one row"):
        model(ids(1, 7), position_ids=packed, use_cache=True)


# --- caches ------------------------------------------------------------------------------------


def test_caches_are_transformers_dynamic_and_static_caches():
    model = model_for("depth_attention")
    with torch.no_grad():
        out = model(ids(), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert isinstance(cache, DepthAttnCache) and isinstance(cache, DynamicCache)
    assert isinstance(DepthAttnStaticCache(model.core_config, 16), StaticCache)
    # Depth-Attention's cache has vanilla's shape
    vanilla = model_for("vanilla")
    with torch.no_grad():
        plain = vanilla(ids(), use_cache=True)
    plain = getattr(plain, "cache", None) or plain.past_key_values
    assert [tuple(layer.keys.shape) for layer in cache.layers] == \
        [tuple(layer.keys.shape) for layer in plain.layers]
    assert [tuple(layer.values.shape) for layer in cache.layers] == \
        [tuple(layer.values.shape) for layer in plain.layers]


def test_a_looped_models_cache_has_a_layer_per_application():
    model = model_for("depth_attention", **LOOPED)
    with torch.no_grad():
        out = model(ids(), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert len(cache.layers) == model.config.num_applications == 7


def test_qwen3_reference_still_matches_with_the_interface():
    """Vanilla under sdpa stays Qwen3's logits exactly (the interface added no rounding)."""
    qwen, ours = qwen3_and_ours()
    assert isinstance(qwen, Qwen3ForCausalLM)
    x = ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, qwen(x).logits, rtol=0, atol=0)


def test_a_static_caches_layers_are_its_buffers():
    """transformers reads a static cache's ``layers`` (shapes, contents): they were empty."""
    model = model_for("depth_attention")
    x = ids(2, 5)
    with torch.no_grad():
        out = model.generate(x, max_new_tokens=3, do_sample=False, cache_implementation="static",
                             return_dict_in_generate=True)
        dynamic = model.generate(x, max_new_tokens=3, do_sample=False)
    assert torch.equal(out.sequences, dynamic)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert len(cache.layers) == 6 and cache.get_seq_length() == 7
    layer = cache.layers[0]
    assert layer.keys.shape == (2, 2, cache.max_len, 16)
    assert layer.keys is cache.inner.keys[0] and layer.values is cache.inner.values[0]
    assert layer.keys[:, :, :7].abs().sum() > 0 and layer.keys[:, :, 7:].abs().sum() == 0


def test_tie_word_embeddings_set_on_a_built_config_ties_the_model(tmp_path):
    """transformers' tools set ``config.tie_word_embeddings``; the saved config then loaded with
    "contradicts tie_embeddings". Both names are one setting once the config is built."""
    model = model_for()
    model.config.tie_word_embeddings = True
    assert model.config.tie_embeddings is True
    model.config.save_pretrained(tmp_path)
    config = DepthAttnConfig.from_pretrained(tmp_path)
    assert config.tie_embeddings is True and config.tie_word_embeddings is True
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        DepthAttnConfig(tie_word_embeddings=True, tie_embeddings=False)
