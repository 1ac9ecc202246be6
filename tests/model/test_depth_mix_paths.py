"""The whole Depth-Attention model gives the same logits and gradients whichever depth-mix
implementation runs inside it, with and without activation checkpointing (which recomputes
each block and must then read the same depth stash as the first time).

Tolerances: float64 1e-10 (the paths differ only in summation order); float32 1e-5 on logits
and 1e-4 absolute plus 1e-4 relative on gradients (those of the random weights reach ~50). The Triton kernel runs interpreted on CPU (see tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from depthattn.ops.depth_mix import set_depth_mix_impl
from depthattn.ops.depth_mix.dispatch import available_depth_mix_impls

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = [name for name in available_depth_mix_impls(DEVICE) if name != "compiled"]


@pytest.fixture
def forced():
    yield set_depth_mix_impl
    set_depth_mix_impl(None)


def logits_and_grads(model, ids, weight, impl, checkpointing=False):
    set_depth_mix_impl(impl)
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


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_implementation_trains_the_model_alike(make_model, make_ids, forced, impl,
                                                      checkpointing):
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


def test_automatic_choice_trains_like_the_reference(make_model, make_ids, forced):
    """No implementation forced: the model must still match the reference."""
    model = make_model(seed=3, dtype=torch.float64, method="depth_attention").train()
    ids = make_ids(2, 7, seed=4)
    weight = torch.randn(2, 7, 128, generator=torch.Generator().manual_seed(5),
                         dtype=torch.float64)
    want = logits_and_grads(model, ids, weight, "reference")
    got = logits_and_grads(model, ids, weight, None)
    assert_same(got, want, 1e-10, 1e-9)
