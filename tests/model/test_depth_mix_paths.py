"""The whole Depth-Attention model gives the same logits and gradients whichever depth-mix
implementation ``CausalLM.set_depth_mix_impl`` chooses, with and without activation checkpointing
(which recomputes each block and must then read the same depth stash as the first time); the
choice is validated, reaches every Depth-Attention module and stays out of the saved config.

Tolerances: float64 1e-10 (the paths differ only in summation order); float32 1e-5 on logits
and 1e-4 absolute plus 1e-4 relative on gradients (those of the random weights reach ~50). The
Triton kernel runs interpreted on CPU (see tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest
import torch

import depthattn.ops.depth_mix as depth_mix_module
from depthattn.ops.depth_mix import IMPLS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_RUNS = importlib.util.find_spec("triton") is not None and (
    DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
NAMED = [name for name in IMPLS if name != "triton" or TRITON_RUNS]  # "auto" included


def logits_and_grads(model, ids, weight, impl, checkpointing=False):
    model.set_depth_mix_impl(impl)
    model.zero_grad()
    model.model.activation_checkpointing = checkpointing
    logits = model(ids)
    (logits * weight).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(got, want, atol, grad_atol):
    torch.testing.assert_close(got[0], want[0], atol=atol, rtol=0)
    rtol = grad_atol if got[0].dtype == torch.float32 else 0
    for name, grad in want[1].items():
        torch.testing.assert_close(got[1][name], grad, atol=grad_atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("impl", NAMED)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_implementation_trains_the_model_alike(make_model, make_ids, impl, checkpointing):
    dtype = torch.float32 if impl == "triton" else torch.float64
    atol, grad_atol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-10, 1e-9)
    model = make_model(seed=3, dtype=dtype, method="depth_attention",
                       method_options={"stride": 2, "recent_window": 1}).train().to(DEVICE)
    ids = make_ids(2, 11, seed=4).to(DEVICE)
    weight = torch.randn(2, 11, 128, generator=torch.Generator().manual_seed(5),
                         dtype=dtype).to(DEVICE)
    want = logits_and_grads(model, ids, weight, "reference")
    got = logits_and_grads(model, ids, weight, impl, checkpointing)
    assert_same(got, want, atol, grad_atol)


def test_the_choice_reaches_the_mix_and_is_validated(make_model, make_ids, monkeypatch):
    from depthattn.methods import depth_attention

    seen = []
    real = depth_attention.depth_mix
    monkeypatch.setattr(depth_attention, "depth_mix",
                        lambda *args: seen.append(args[-1]) or real(*args))
    model = make_model(method="depth_attention", method_options={"stride": 2})
    model(make_ids(1, 3))
    model.set_depth_mix_impl("reference")
    model(make_ids(1, 3))
    assert set(seen[:len(seen) // 2]) == {"auto"} and set(seen[len(seen) // 2:]) == {"reference"}
    with pytest.raises(ValueError, match=r"depth-mix impl \('fast'\) is unknown; allowed: auto, "
                                         r"reference, unstacked, inference, triton"):
        model.set_depth_mix_impl("fast")
    assert model.model.cross_layer.impl == "reference"  # a refused choice changes nothing
    with pytest.raises(ValueError, match=r"depth-mix impl \('fast'\) is unknown"):
        model.model.cross_layer.impl = "fast"


def test_the_choice_is_not_saved(make_model):
    model = make_model(method="depth_attention")
    config, keys = dataclasses.asdict(model.config), set(model.state_dict())
    model.set_depth_mix_impl("reference")
    assert dataclasses.asdict(model.config) == config and set(model.state_dict()) == keys


def test_a_model_without_depth_attention_takes_the_choice_and_ignores_it(make_model, make_ids):
    model = make_model(method="vanilla")
    want = model(make_ids(1, 5))
    model.set_depth_mix_impl("reference")
    torch.testing.assert_close(model(make_ids(1, 5)), want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="is unknown"):
        model.set_depth_mix_impl("fast")


def test_the_choice_holds_at_every_loop_depth(make_model, make_ids, monkeypatch):
    """A looped model runs its one Depth-Attention module at every depth (a call at another r,
    or set_loop_iterations): the choice holds at each, and the call uses it."""
    model = make_model(method="depth_attention", num_layers=4, prelude_layers=1, loop_layers=2,
                       loop_iterations=2)
    ids = make_ids(1, 3)
    model(ids, loop_iterations=3)  # a depth run before the choice
    model.set_depth_mix_impl("reference")
    calls = []
    reference = depth_mix_module._EAGER["reference"]

    def counting(*args, **kwargs):
        calls.append(len(args[1]))  # the sources of one mix
        return reference(*args, **kwargs)

    monkeypatch.setitem(depth_mix_module._EAGER, "reference", counting)
    for r in (4, 2):
        calls.clear()
        model(ids, loop_iterations=r)
        assert len(calls) == 1 + 2 * r  # every application but the first mixes, by reference
    model.set_loop_iterations(5)
    calls.clear()
    model(ids)
    assert len(calls) == 1 + 2 * 5 and model.model.cross_layer.impl == "reference"

