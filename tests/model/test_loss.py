"""CausalLM.loss (chunked LM-head cross-entropy) against cross-entropy of the full logits: the
loss and every parameter's gradient, untied and tied embeddings, with ignored targets and padding.
float64, relative max error 1e-10."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import random_ids, tiny_model


def _loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_loss_matches_cross_entropy_of_the_logits(method, tie):
    model = tiny_model(seed=3, dtype=torch.float64, method=method, tie_embeddings=tie).train()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    ids = random_ids(3, 17, seed=3)
    targets = random_ids(3, 17, seed=4)
    targets[:, :4] = -100
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding, as the loader never makes, but the mask must be honoured

    def reference():
        logits = model(ids, attention_mask=mask)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    expected, expected_grads = _loss_and_grads(model, reference)
    loss, grads = _loss_and_grads(
        model, lambda: model.loss(ids, targets, attention_mask=mask, chunk_size=10))
    assert abs(loss - expected) / abs(expected) < 1e-10
    assert grads.keys() == expected_grads.keys()
    for name, want in expected_grads.items():
        err = (grads[name] - want).abs().max() / want.abs().max()
        assert err < 1e-10, name


def test_float32_loss_equals_the_trainers_previous_formula():
    """The formula the trainer used before: F.cross_entropy(logits.float()), to 1e-5 in float32."""
    model = tiny_model(seed=1).train()
    ids, targets = random_ids(4, 32, seed=1), random_ids(4, 32, seed=2)
    expected = F.cross_entropy(model(ids).float().flatten(0, 1), targets.flatten())
    assert model.loss(ids, targets).item() == pytest.approx(expected.item(), abs=1e-5)


def test_mismatched_targets_are_refused():
    model = tiny_model()
    ids = random_ids(2, 8)
    with pytest.raises(ValueError, match=r"targets shape \(2, 7\) must equal input_ids shape "
                                         r"\(2, 8\)"):
        model.loss(ids, ids[:, 1:])
