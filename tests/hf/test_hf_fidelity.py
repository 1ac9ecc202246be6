"""``DepthAttnForCausalLM`` behaves as a transformers causal LM: transformers' own ``generate``
(every decoding option), a ``transformers.Cache`` of mixed values, Qwen3's forward arguments.

With method ``vanilla`` the model IS Qwen3, so every generate option must give exactly
``Qwen3ForCausalLM``'s tokens from the same random weights. For the cross-layer methods there is
no reference implementation; there the cached path must equal the uncached one.

The cache keyword is ``cache`` from transformers 5.24 on and ``past_key_values`` before:
``CACHE_ARG`` and ``out_cache`` follow the installed version.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import (
    Cache,
    GenerationMixin,
    Qwen3ForCausalLM,
    StoppingCriteria,
    StoppingCriteriaList,
)

from depthattn import CausalLM
from depthattn.hf import DepthAttnForCausalLM
from depthattn.hf.cache import DepthAttnCache
from depthattn.model.cache import KVCache
from depthattn.model.generate import generate as core_generate
from tests.conftest import randomize_, tiny_config
from tests.model.test_decoder import hf_model, ours_from

ATOL = 1e-5
# Cached vs uncached generation: ten steps of float32 rounding in differently shaped attention
# reach ~1e-5 on logits of size ~7 (in float64 the two paths agree exactly).
CACHED_ATOL = 5e-5
# Matrices ~ N(0, 0.2²): large enough that greedy decoding does not settle on one token.
STD = 0.2
# Qwen3 with SDPA, as ours: bit-identical logits without padding (eager differs by ~1e-5)
ATTN = "sdpa"
PAD = 0  # prompts use ids >= 1, so the pad id never occurs in a prompt
NEW = 10  # tokens generated per call
WITH_LOGITS = dict(return_dict_in_generate=True, output_logits=True)  # compare logits too
CACHE_ARG = ("cache" if "cache" in inspect.signature(Qwen3ForCausalLM.forward).parameters
             else "past_key_values")

# Cross-layer methods whose cached decoding is checked against uncached decoding: ours,
# a residual-stream baseline with parameters of its own, and a combination.
METHODS = {
    "depth_attention": dict(method="depth_attention",
                            method_options={"stride": 2, "recent_window": 1}),
    "hyper_connections": dict(method="hyper_connections"),
    "denseformer": dict(method="denseformer"),
    "depth_attention+denseformer": dict(method="depth_attention+denseformer"),
}


# --- helpers ---------------------------------------------------------------------------------


def out_cache(out):
    """The cache of a forward or generate output, under either version's field name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def randomize_wide(model, seed):
    return randomize_(model, seed, std=STD)


def qwen3_and_ours(seed: int = 0, attn: str = ATTN) -> tuple[Qwen3ForCausalLM,
                                                             DepthAttnForCausalLM]:
    """Qwen3ForCausalLM (4 layers, vocab 160) and our vanilla model with the same weights."""
    qwen = hf_model(randomize_wide, seed=seed, attn=attn)
    return qwen, DepthAttnForCausalLM.from_core(ours_from(qwen)).eval()


def our_model(method: str = "vanilla", seed: int = 0, **overrides) -> DepthAttnForCausalLM:
    """The TINY geometry (6 layers, vocab 128), every parameter random (method ones included)."""
    torch.manual_seed(seed)
    core = CausalLM(tiny_config(method=method, **overrides))
    randomize_(core, seed, std=STD)
    return DepthAttnForCausalLM.from_core(core.eval()).eval()


def prompts(padded: bool = True, lengths=(8, 5, 3), vocab: int = 128,
            seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 8) ids in [1, vocab) and their mask; left-padded to ``lengths`` when ``padded``."""
    total = max(lengths)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), total), generator=gen)
    mask = torch.ones_like(ids)
    if padded:
        for row, n in enumerate(lengths):
            mask[row, :total - n] = 0
    return ids.masked_fill(mask == 0, PAD), mask


def generate(model, ids, mask, seed: int = 0, **options):
    """``model.generate`` with the global RNG seeded first (sampling draws from it)."""
    options = {"max_new_tokens": NEW, "pad_token_id": PAD, **options}
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, **options)


def assert_varied(sequences: torch.Tensor, prompt_len: int) -> None:
    """Guard: the comparison is between non-trivial outputs, not one repeated token."""
    assert sequences[:, prompt_len:].unique().numel() > 1, sequences


def assert_same_generation(got, expected, atol: float = ATOL) -> None:
    """Equal tokens, and raw logits close at every step (argmax alone would hide small
    numerical deviations); both from ``return_dict_in_generate=True, output_logits=True``."""
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.logits) == len(expected.logits)
    for step, (a, b) in enumerate(zip(got.logits, expected.logits)):
        assert torch.allclose(a, b, atol=atol), (step, (a - b).abs().max())


def pick_eos(row: torch.Tensor) -> int:
    """A token greedy decoding emits early (step 1-4) but not at an earlier step."""
    for step in range(1, 5):
        if int(row[step]) not in row[:step].tolist():
            return int(row[step])
    raise AssertionError(f"no early token to use as EOS in {row.tolist()}")


class StopOnToken(StoppingCriteria):
    """Stops the whole batch once any row emits ``token`` (without an EOS criterion transformers
    does not pad finished rows, so per-row stopping would only show when every row stopped)."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor,
                 **kwargs) -> torch.BoolTensor:
        hit = bool((input_ids[:, -1] == self.token).any())
        return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)


# --- 1. vanilla generate == Qwen3ForCausalLM.generate -------------------------------------------

SAMPLING = dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.8)
GENERATE_OPTIONS = {
    "greedy": dict(do_sample=False),
    "beam_search": dict(num_beams=3, do_sample=False),
    "beams_return_2": dict(num_beams=3, num_return_sequences=2, do_sample=False),
    "sampling_return_2": dict(num_return_sequences=2, **SAMPLING),
    "repetition_penalty": dict(repetition_penalty=1.3),
    "no_repeat_ngram": dict(no_repeat_ngram_size=2),
    "sampling": SAMPLING,
}


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
@pytest.mark.parametrize("options", list(GENERATE_OPTIONS.values()), ids=list(GENERATE_OPTIONS))
def test_vanilla_generate_equals_qwen3(options, padded):
    """transformers' generate drives both models; equal logits give equal tokens, option by
    option (beam bookkeeping, logits processors, sampling from the seeded RNG)."""
    qwen, ours = qwen3_and_ours()
    ids, mask = prompts(padded, vocab=160)
    expected = generate(qwen, ids, mask, **options, **WITH_LOGITS)
    assert_varied(expected.sequences, ids.shape[1])
    assert_same_generation(generate(ours, ids, mask, **options, **WITH_LOGITS), expected)


def test_vanilla_min_new_tokens_with_eos_equals_qwen3():
    """EOS chosen among the first tokens greedy emits, so min_new_tokens changes the output."""
    qwen, ours = qwen3_and_ours()
    ids, mask = prompts(vocab=160)
    free = generate(qwen, ids, mask)
    eos = pick_eos(free[0, ids.shape[1]:])
    stopped = generate(qwen, ids, mask, eos_token_id=eos)
    held = generate(qwen, ids, mask, eos_token_id=eos, min_new_tokens=6)
    assert not torch.equal(held, stopped)  # min_new_tokens matters here
    assert torch.equal(generate(ours, ids, mask, eos_token_id=eos), stopped)
    assert torch.equal(generate(ours, ids, mask, eos_token_id=eos, min_new_tokens=6), held)


def test_vanilla_custom_stopping_criteria_equals_qwen3():
    """A user StoppingCriteria runs inside transformers' loop for our model too."""
    qwen, ours = qwen3_and_ours()
    ids, mask = prompts(vocab=160)
    free = generate(qwen, ids, mask)
    token = int(free[0, ids.shape[1] + 2])
    criteria = StoppingCriteriaList([StopOnToken(token)])
    expected = generate(qwen, ids, mask, stopping_criteria=criteria)
    assert expected.shape[1] < free.shape[1]  # the criterion stopped generation early
    assert torch.equal(generate(ours, ids, mask, stopping_criteria=criteria), expected)


@pytest.mark.parametrize("options", [GENERATE_OPTIONS["greedy"], GENERATE_OPTIONS["beam_search"]],
                         ids=["greedy", "beam_search"])
def test_vanilla_generate_scores_and_logits_equal_qwen3(options):
    """return_dict_in_generate with output_scores/output_logits: same sequences, and the
    per-step (processed) scores and raw logits agree to 1e-5."""
    qwen, ours = qwen3_and_ours()
    ids, mask = prompts(vocab=160)
    extra = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)
    expected = generate(qwen, ids, mask, **options, **extra)
    got = generate(ours, ids, mask, **options, **extra)
    assert torch.equal(got.sequences, expected.sequences)
    for name in ("scores", "logits"):
        theirs, mine = getattr(expected, name), getattr(got, name)
        assert len(mine) == len(theirs), name
        for step, (a, b) in enumerate(zip(mine, theirs)):
            assert torch.allclose(a, b, atol=ATOL), (name, step, (a - b).abs().max())
    if "num_beams" in options:
        assert torch.allclose(got.sequences_scores, expected.sequences_scores, atol=ATOL)
        assert torch.equal(got.beam_indices, expected.beam_indices)


def test_generate_is_transformers_own():
    """No override: every option above comes from transformers' decoding loop itself."""
    assert DepthAttnForCausalLM.generate is GenerationMixin.generate


def test_generate_creates_a_depthattn_cache():
    """generate without a cache makes ours (not a DynamicCache) and returns it."""
    model = our_model(**METHODS["depth_attention"])
    ids, mask = prompts()
    out = generate(model, ids, mask, max_new_tokens=3, return_dict_in_generate=True)
    assert isinstance(out_cache(out), DepthAttnCache)


# --- 2. hidden states ---------------------------------------------------------------------------


def test_hidden_states_equal_qwen3():
    """L + 1 states as Qwen3 returns them: embeddings, layers 1..L-1, final-normed layer L."""
    qwen, ours = qwen3_and_ours()
    ids, _ = prompts(padded=False, vocab=160)
    with torch.no_grad():
        expected = qwen(ids, output_hidden_states=True).hidden_states
        got = ours(ids, output_hidden_states=True).hidden_states
    assert len(expected) == qwen.config.num_hidden_layers + 1
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert torch.allclose(a, b, atol=ATOL), (i, (a - b).abs().max())


@pytest.mark.parametrize("name", list(METHODS))
def test_hidden_states_of_cross_layer_methods(name):
    """Other methods: L + 1 states, the first the embeddings, the last what the LM head reads."""
    model = our_model(**METHODS[name])
    ids, _ = prompts(padded=False)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        states = out.hidden_states
        assert len(states) == model.config.num_hidden_layers + 1
        assert torch.equal(states[0], model.get_input_embeddings()(ids))
        assert torch.allclose(model.lm_head(states[-1]), out.logits, atol=ATOL)


# --- 3. cross-layer methods: cached == uncached -------------------------------------------------


@pytest.mark.parametrize("options", [GENERATE_OPTIONS["greedy"], GENERATE_OPTIONS["beam_search"],
                                     SAMPLING], ids=["greedy", "beam_search", "sampling"])
@pytest.mark.parametrize("name", list(METHODS))
def test_generate_with_cache_equals_without(name, options):
    """The cache of mixed values gives what recomputing everything each step gives."""
    model = our_model(**METHODS[name])
    ids, mask = prompts()
    cached = generate(model, ids, mask, use_cache=True, **options, **WITH_LOGITS)
    assert_varied(cached.sequences, ids.shape[1])
    uncached = generate(model, ids, mask, use_cache=False, **options, **WITH_LOGITS)
    assert_same_generation(uncached, cached, atol=CACHED_ATOL)


@pytest.mark.parametrize("name", ["vanilla", *METHODS])
def test_manual_cached_decoding_equals_full_forward(name):
    """forward(use_cache=True), then the cache passed back with the full (B, past + T) mask:
    the logits of each continuation equal those of one uncached forward over everything."""
    model = our_model(**METHODS.get(name, {"method": name}))
    ids, mask = prompts()
    gen = torch.Generator().manual_seed(5)
    more = [torch.randint(1, 128, (3, n), generator=gen) for n in (3, 1)]
    full_ids = torch.cat([ids, *more], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(full_ids[:, ids.shape[1]:])], dim=1)
    with torch.no_grad():
        full = model(full_ids, attention_mask=full_mask, use_cache=False).logits
        out = model(ids, attention_mask=mask, use_cache=True)
        cache = out_cache(out)
        assert isinstance(cache, DepthAttnCache) and isinstance(cache, Cache)
        assert cache.get_seq_length() == ids.shape[1]
        real = mask.bool()
        assert torch.allclose(out.logits[real], full[:, :ids.shape[1]][real], atol=ATOL)
        seen = ids.shape[1]
        for chunk in more:
            seen += chunk.shape[1]
            out = model(chunk, attention_mask=full_mask[:, :seen], use_cache=True,
                        **{CACHE_ARG: cache})
            assert out_cache(out) is cache
            assert cache.get_seq_length() == seen
            expected = full[:, seen - chunk.shape[1]:seen]
            assert torch.allclose(out.logits, expected, atol=ATOL), \
                (out.logits - expected).abs().max()


# --- 4. beam search reorders the cache ----------------------------------------------------------


@pytest.mark.parametrize("name", ["depth_attention", "hyper_connections"])
def test_reorder_cache_equals_decoding_the_permuted_batch(name):
    """reorder_cache(beam_idx) (with a repeated row, as beam search does) moves every row's
    keys, mixed values and padding record: decoding then equals an uncached forward over
    ids[beam_idx] and the new tokens."""
    model = our_model(**METHODS[name])
    ids, mask = prompts()
    beam_idx = torch.tensor([2, 0, 0])
    nxt = torch.randint(1, 128, (3, 2), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cache = out_cache(model(ids, attention_mask=mask, use_cache=True))
        cache.reorder_cache(beam_idx)
        moved_mask = torch.cat([mask[beam_idx], torch.ones_like(nxt)], dim=1)
        got = model(nxt, attention_mask=moved_mask, use_cache=True, **{CACHE_ARG: cache}).logits

        expected = model(torch.cat([ids[beam_idx], nxt], dim=1), attention_mask=moved_mask,
                         use_cache=False).logits[:, -nxt.shape[1]:]
    assert torch.allclose(got, expected, atol=ATOL), (got - expected).abs().max()


# --- 5. gradient checkpointing ------------------------------------------------------------------


def grads_of_loss(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # 5.24: activation_checkpointing_enable
@pytest.mark.parametrize("kwargs", [{}, {"gradient_checkpointing_kwargs": {"use_reentrant": False}}],
                         ids=["default", "non_reentrant"])
@pytest.mark.parametrize("name", ["vanilla", "depth_attention", "depth_attention+denseformer"])
def test_gradient_checkpointing_gives_the_same_gradients(name, kwargs):
    """Recomputing blocks in backward changes no gradient, Depth-Attention's sources (which
    reach later layers outside the blocks' arguments) included; and it does recompute."""
    model = our_model(**METHODS.get(name, {"method": name})).train()
    ids, _ = prompts(padded=False)
    plain = grads_of_loss(model, ids)
    model.gradient_checkpointing_enable(**kwargs)
    assert model.is_gradient_checkpointing
    calls = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda *args: calls.append(1))
    checkpointed = grads_of_loss(model, ids)
    hook.remove()
    assert len(calls) == 2  # forward, then the recomputation in backward
    assert checkpointed.keys() == plain.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], msg=key)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_reentrant_gradient_checkpointing_is_refused():
    """Reentrant checkpointing would silently drop the gradients of Depth-Attention's sources:
    a ValueError naming use_reentrant, at enable time or at the first training forward."""
    model = our_model(**METHODS["depth_attention"]).train()
    ids, _ = prompts(padded=False)
    with pytest.raises(ValueError, match="use_reentrant"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model(ids, labels=ids).loss.backward()


# --- 6. resizing the vocabulary -----------------------------------------------------------------


def test_resize_token_embeddings_accepts_new_ids_and_survives_a_round_trip(tmp_path):
    """New ids work at once (the core's own vocabulary check follows), and the new size is
    what save_pretrained writes."""
    model = our_model(**METHODS["depth_attention"])
    old = model.config.vocab_size
    model.resize_token_embeddings(old + 40)
    assert model.config.vocab_size == old + 40
    ids = torch.tensor([[1, old, old + 39, 5]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 4, old + 40)
    model.save_pretrained(tmp_path)
    again = DepthAttnForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.vocab_size == old + 40
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, logits, atol=ATOL)


# --- 7. inputs_embeds ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vanilla", "depth_attention"])
def test_forward_with_inputs_embeds_equals_input_ids(name):
    """inputs_embeds = embed(ids) is the same forward, left padding included."""
    model = our_model(**METHODS.get(name, {"method": name}))
    ids, mask = prompts()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        expected = model(ids, attention_mask=mask).logits
        got = model(inputs_embeds=embeds, attention_mask=mask).logits
    assert torch.allclose(got[mask.bool()], expected[mask.bool()], atol=ATOL)


def test_vanilla_generate_from_inputs_embeds_equals_qwen3():
    """generate(inputs_embeds=...) returns the new tokens only, as Qwen3's does."""
    qwen, ours = qwen3_and_ours()
    ids, mask = prompts(vocab=160)
    embeds = qwen.get_input_embeddings()(ids).detach()
    options = dict(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=NEW,
                   pad_token_id=PAD, **WITH_LOGITS)
    with torch.no_grad():
        expected = qwen.generate(**options)
        got = ours.generate(**options)
    assert expected.sequences.shape == (3, NEW)
    assert_varied(expected.sequences, 0)
    assert_same_generation(got, expected)


def test_generate_from_inputs_embeds_continues_like_input_ids():
    """Depth-Attention: prefilling from embeddings caches the same mixed values as from ids."""
    model = our_model(**METHODS["depth_attention"])
    ids, mask = prompts()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        got = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=NEW,
                             pad_token_id=PAD, **WITH_LOGITS)
    expected = generate(model, ids, mask, **WITH_LOGITS)
    expected.sequences = expected.sequences[:, ids.shape[1]:]  # embeddings: new tokens only
    assert_same_generation(got, expected)


# --- 8. outputs: tuples, loss, logits_to_keep, attention weights --------------------------------


def test_return_dict_false_gives_tuples():
    """As Qwen3: (logits, ...) without labels, (loss, logits, ...) with them."""
    model = our_model(**METHODS["depth_attention"])
    ids, _ = prompts(padded=False)
    with torch.no_grad():
        logits = model(ids).logits
        out = model(ids, return_dict=False)
        assert isinstance(out, tuple) and torch.equal(out[0], logits)
        with_loss = model(ids, labels=ids, return_dict=False)
        assert isinstance(with_loss, tuple)
        assert with_loss[0].dim() == 0 and torch.equal(with_loss[1], logits)


def test_loss_and_logits_to_keep_equal_qwen3():
    """labels (with -100 ignored) give Qwen3's loss; logits_to_keep=1 the last position only."""
    qwen, ours = qwen3_and_ours()
    ids, _ = prompts(padded=False, vocab=160)
    labels = ids.masked_fill(torch.rand(ids.shape, generator=torch.Generator().manual_seed(2))
                             < 0.3, -100)
    with torch.no_grad():
        expected, got = qwen(ids, labels=labels), ours(ids, labels=labels)
        assert torch.allclose(got.loss, expected.loss, atol=ATOL)
        last = ours(ids, logits_to_keep=1).logits
    assert last.shape == (3, 1, 160)
    assert torch.allclose(last, got.logits[:, -1:], atol=ATOL)


# --- 9. the core API's own checks ---------------------------------------------------------------


def test_core_generate_refuses_right_padding():
    """Core decoding appends after the last column: right-padded prompts would be wrong."""
    core = our_model(**METHODS["depth_attention"]).core()
    ids, mask = prompts()
    right = mask.flip(-1)  # the padding at the end
    with pytest.raises(ValueError, match="left"):
        core_generate(core, ids, attention_mask=right, max_new_tokens=2)


def test_core_mask_contradicting_the_cache_is_refused():
    """A (B, past + T) mask whose past columns disagree with the padding the KVCache recorded
    is refused before anything is written; the consistent mask then decodes as a full forward."""
    core = our_model(**METHODS["depth_attention"]).core()
    ids, mask = prompts(lengths=(5, 8, 3))
    assert mask[0, 0] == 0  # row 0 starts with padding
    cache = KVCache.for_model(core, 3, 16)
    nxt = torch.randint(1, 128, (3, 1), generator=torch.Generator().manual_seed(4))
    full_mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    with torch.no_grad():
        core(ids, attention_mask=mask, cache=cache)
        with pytest.raises(ValueError, match="attention_mask"):
            core(nxt, attention_mask=torch.ones_like(full_mask), cache=cache)
        got = core(nxt, attention_mask=full_mask, cache=cache)
        expected = core(torch.cat([ids, nxt], dim=1), attention_mask=full_mask)[:, -1:]
    assert torch.allclose(got, expected, atol=ATOL)
