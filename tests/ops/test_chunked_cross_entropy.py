"""Chunked LM-head cross-entropy against ``F.cross_entropy(hidden @ weight.T, targets)``: the loss
and both gradients, as relative max error (float64 1e-10, float32 1e-5), with ignored targets and
chunk sizes that do not divide the token count; and the full logits are never saved."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from depthattn.ops.chunked_cross_entropy import chunked_cross_entropy

V, D = 97, 24  # odd sizes; N (tokens) is never V or D, so a saved (N, V) tensor is recognisable
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def inputs(shape=(3, 21), dtype=torch.float32, seed=0, ignored=0.2, ignore_index=-100):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, D, generator=gen, dtype=torch.float64).to(dtype)
    weight = (torch.randn(V, D, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    targets = torch.randint(0, V, shape, generator=gen)
    targets[torch.rand(shape, generator=gen) < ignored] = ignore_index
    return hidden.requires_grad_(), weight.requires_grad_(), targets


def reference(hidden, weight, targets, reduction="mean", ignore_index=-100, scale=1.0):
    loss = F.cross_entropy((hidden @ weight.T).flatten(0, -2), targets.flatten(),
                           ignore_index=ignore_index, reduction=reduction)
    return loss, torch.autograd.grad(loss * scale, (hidden, weight))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_size", [1, 8, 63, 64, 1000])  # N = 63: 8 does not divide it
def test_loss_and_gradients_match_cross_entropy(dtype, reduction, chunk_size):
    hidden, weight, targets = inputs(dtype=dtype)
    assert (targets == -100).any() and (targets != -100).any()
    expected, expected_grads = reference(hidden, weight, targets, reduction)
    loss = chunked_cross_entropy(hidden, weight, targets, chunk_size=chunk_size,
                                 reduction=reduction)
    grads = torch.autograd.grad(loss, (hidden, weight))
    assert loss.dtype == dtype and loss.shape == ()
    assert rel_err(loss, expected) < TOLERANCE[dtype]
    for got, want, name in zip(grads, expected_grads, ("hidden", "weight")):
        assert got.dtype == dtype and got.shape == want.shape
        assert rel_err(got, want) < TOLERANCE[dtype], name


def test_backward_scales_by_the_incoming_gradient():
    """As the trainer divides by the accumulation steps; grads flow through .backward()."""
    hidden, weight, targets = inputs(dtype=torch.float64)
    _, expected = reference(hidden, weight, targets, scale=0.25)
    (chunked_cross_entropy(hidden, weight, targets, chunk_size=5) * 0.25).backward()
    assert rel_err(hidden.grad, expected[0]) < 1e-10
    assert rel_err(weight.grad, expected[1]) < 1e-10


def test_another_ignore_index_and_flat_inputs():
    hidden, weight, targets = inputs(shape=(50,), dtype=torch.float64, ignore_index=3)
    expected, expected_grads = reference(hidden, weight, targets, ignore_index=3)
    loss = chunked_cross_entropy(hidden, weight, targets, chunk_size=16, ignore_index=3)
    assert rel_err(loss, expected) < 1e-10
    for got, want in zip(torch.autograd.grad(loss, (hidden, weight)), expected_grads):
        assert rel_err(got, want) < 1e-10


def test_all_targets_ignored_gives_nan_like_cross_entropy():
    hidden, weight, targets = inputs(ignored=1.0)
    assert torch.isnan(F.cross_entropy((hidden @ weight.T).flatten(0, 1), targets.flatten()))
    assert torch.isnan(chunked_cross_entropy(hidden, weight, targets, chunk_size=8))
    assert chunked_cross_entropy(hidden, weight, targets, chunk_size=8, reduction="sum") == 0


def test_only_the_inputs_that_require_grad_get_one():
    hidden, weight, targets = inputs(dtype=torch.float64)
    _, (expected, _) = reference(hidden, weight, targets)
    weight.requires_grad_(False)
    chunked_cross_entropy(hidden, weight, targets, chunk_size=10).backward()
    assert weight.grad is None
    assert rel_err(hidden.grad, expected) < 1e-10
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, weight, targets, chunk_size=10)
    assert not loss.requires_grad


def _largest_saved_numel(fn) -> int:
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return max(sizes, default=0)


def test_the_full_logits_are_never_saved_for_backward():
    hidden, weight, targets = inputs(shape=(4, 40))
    N = targets.numel()
    full = _largest_saved_numel(lambda: reference(hidden, weight, targets))
    assert full >= N * V  # guard: the hook sees the reference's logits
    chunked = _largest_saved_numel(
        lambda: chunked_cross_entropy(hidden, weight, targets, chunk_size=16).backward())
    assert chunked <= max(N, V) * D  # grad_hidden (N, D) and grad_weight (V, D), nothing bigger


def test_bfloat16_autocast_keeps_the_softmax_in_float32():
    """Under autocast the matmuls run in bf16 (as nn.Linear's would) and the loss is float32; it
    matches the reference on the same bf16 logits, and grads come back in the inputs' dtype."""
    hidden, weight, targets = inputs(shape=(2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(hidden, weight, targets, chunk_size=16)
        logits = hidden @ weight.T
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    expected = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    assert rel_err(loss, expected) < 1e-6
    grads = torch.autograd.grad(loss, (hidden, weight))
    _, exact = reference(hidden, weight, targets)
    for got, want in zip(grads, exact):
        assert got.dtype == torch.float32
        assert rel_err(got, want) < 2e-2  # bf16 matmuls


@pytest.mark.parametrize("kwargs, match", [
    (dict(chunk_size=0), r"chunk_size \(0\) must be a positive integer"),
    (dict(chunk_size=2.5), r"chunk_size \(2.5\)"),
    (dict(chunk_size=True), r"chunk_size \(True\)"),
    (dict(reduction="none"), r"reduction \('none'\) must be 'mean' or 'sum'"),
])
def test_bad_options_are_refused(kwargs, match):
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError, match=match):
        chunked_cross_entropy(hidden, weight, targets, **kwargs)


def test_bad_shapes_are_refused():
    hidden, weight, targets = inputs(shape=(3, 21))
    with pytest.raises(ValueError, match=r"weight must be \(vocab, hidden\)"):
        chunked_cross_entropy(hidden, weight[None], targets)
    with pytest.raises(ValueError, match=r"hidden's last dim must be weight's hidden size \(24\)"):
        chunked_cross_entropy(hidden[..., :-1], weight, targets)
    with pytest.raises(ValueError, match=r"targets shape \(3, 20\) must be hidden's leading dims "
                                         r"\(3, 21\)"):
        chunked_cross_entropy(hidden, weight, targets[:, 1:])
    with pytest.raises(ValueError, match="targets must be integer class ids"):
        chunked_cross_entropy(hidden, weight, targets.float())


@pytest.mark.slow
def test_compiled_matches_eager():
    hidden, weight, targets = inputs()
    compiled = torch.compile(chunked_cross_entropy, fullgraph=True)
    expected, expected_grads = reference(hidden, weight, targets)
    loss = compiled(hidden, weight, targets, chunk_size=16)
    assert rel_err(loss, expected) < 1e-5
    for got, want in zip(torch.autograd.grad(loss, (hidden, weight)), expected_grads):
        assert rel_err(got, want) < 1e-5
