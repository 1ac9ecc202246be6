"""transformers' ``generate`` with our ``DepthAttnCache`` == a manual argmax loop over full
forwards (option-by-option equality with Qwen3 is in test_hf_fidelity.py)."""

from __future__ import annotations

import pytest
import torch

from depthattn.hf import DepthAttnForCausalLM

PAD = 0


def hf_model(make_model, **overrides) -> DepthAttnForCausalLM:
    return DepthAttnForCausalLM.from_core(make_model(seed=7, **overrides)).eval()


def left_padded(make_ids, lengths: list[int], total: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = make_ids(len(lengths), total, seed=11).clamp(min=1)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, total - n:] = 1
    return ids.masked_fill(mask == 0, PAD), mask


@torch.no_grad()
def manual_greedy(model, ids, mask, new_tokens, eos=None, pad=PAD):
    """Token by token: a full forward (no cache) over everything so far, argmax of the last."""
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(new_tokens):
        token = model(ids, attention_mask=mask).logits[:, -1].argmax(-1)
        token = token.masked_fill(done, pad)
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if eos is not None:
            done |= token == eos
            if bool(done.all()):
                break
    return ids


@pytest.mark.parametrize("overrides", [
    dict(method="vanilla"),
    dict(method="depth_attention", method_options={"stride": 2, "recent_window": 1}),
    dict(method="depth_attention", k_norm_position="after_rope"),
])
def test_greedy_equals_manual_loop_with_left_padding(make_model, make_ids, overrides):
    model = hf_model(make_model, **overrides)
    ids, mask = left_padded(make_ids, [9, 5, 2], 9)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert out.shape == (3, 21)
    assert torch.equal(out, manual_greedy(model, ids, mask, 12))


def test_greedy_unpadded_batch_and_max_length(make_model, make_ids):
    model = hf_model(make_model, method="depth_attention")
    ids = make_ids(2, 6, seed=3)
    out = model.generate(ids, max_length=14)  # the model's GenerationConfig default: greedy
    assert torch.equal(out, manual_greedy(model, ids, torch.ones_like(ids), 8))


def test_eos_stops_rows_and_pads(make_model, make_ids):
    model = hf_model(make_model, method="depth_attention")
    ids, mask = left_padded(make_ids, [7, 4], 7)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=10)
    eos = int(free[0, 9])  # the third token row 0 generates: row 0 stops there
    out = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos,
                         pad_token_id=PAD)
    assert torch.equal(out, manual_greedy(model, ids, mask, 10, eos=eos))
    assert (out[0, 10:] == PAD).all()


def test_sampling_is_reproducible_and_respects_top_k(make_model, make_ids):
    model = hf_model(make_model, method="depth_attention")
    ids = make_ids(2, 5, seed=5)
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=0.7, top_k=1)
    torch.manual_seed(0)
    a = model.generate(ids, **kwargs)
    assert torch.equal(a, model.generate(ids, max_new_tokens=8))  # top_k=1 is greedy
    kwargs.update(top_k=20, top_p=0.9)
    torch.manual_seed(1)
    b = model.generate(ids, **kwargs)
    torch.manual_seed(1)
    c = model.generate(ids, **kwargs)
    assert torch.equal(b, c) and b.shape == (2, 13)


def test_streamer_protocol(make_model, make_ids):
    class Recorder:
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(value.clone())

        def end(self):
            self.calls.append("end")

    model = hf_model(make_model, method="depth_attention")
    ids = make_ids(1, 4)
    streamer = Recorder()
    out = model.generate(ids, max_new_tokens=5, streamer=streamer)
    assert torch.equal(streamer.calls[0], ids)  # the prompt first, as Hugging Face does
    assert streamer.calls[-1] == "end"
    assert torch.equal(torch.cat(streamer.calls[1:-1]), out[0, 4:])


def test_what_cannot_work_is_refused_by_name(make_model, make_ids):
    model = hf_model(make_model, method="depth_attention")
    ids = make_ids(1, 4)
    with pytest.raises(ValueError, match="generator"):  # transformers' own check of kwargs
        model.generate(ids, max_new_tokens=2, generator=torch.Generator())
    with pytest.raises(ValueError, match="cache_implementation='offloaded'"):
        model.generate(ids, max_new_tokens=2, cache_implementation="offloaded")
    with pytest.raises(ValueError, match="use_reentrant"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})


def test_a_cache_position_that_contradicts_the_cache_is_refused(make_model, make_ids):
    model = hf_model(make_model, method="depth_attention")
    ids = make_ids(1, 4)
    with torch.no_grad():
        out = model(ids, cache_position=torch.arange(4), use_cache=True)  # as the cache says
        cache = out.past_key_values if getattr(out, "cache", None) is None else out.cache
        with pytest.raises(ValueError, match="cache_position"):
            model(ids[:, :1], past_key_values=cache, cache_position=torch.tensor([0]))
