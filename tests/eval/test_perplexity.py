"""Perplexity evaluation goes through the chunked loss (no (B, T, vocab) logits) and gives the
numbers of the plain cross-entropy over full logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from depthattn.data.loader import IGNORE_INDEX
from depthattn.eval.perplexity import evaluate_perplexity
from depthattn.model.decoder import CausalLM
from tests.conftest import tiny_model
from tests.model.test_cache import batches


def plain_nll(model, data):
    """The yardstick: full logits, float32 cross-entropy per batch, float64 across batches."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, targets in data:
            logits = model(ids).float()
            total += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                           ignore_index=IGNORE_INDEX, reduction="sum").double())
            count += int((targets != IGNORE_INDEX).sum())
    return total / count, count


@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_chunked_perplexity_equals_the_full_logits(method, monkeypatch):
    model = tiny_model(method=method, seed=5)
    expected, count = plain_nll(model, batches(n=4))

    def no_full_logits(*args, **kwargs):
        raise AssertionError("evaluation computed the full logits")

    monkeypatch.setattr(CausalLM, "forward", no_full_logits)
    result = evaluate_perplexity(model, batches(n=4))
    assert result.tokens == count
    assert result.loss == pytest.approx(expected, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-6)


def test_a_broken_loss_is_seen():
    """The tolerance above can fail: a loss that drops one token per batch moves the mean."""
    model = tiny_model(method="vanilla", seed=5)
    expected, _ = plain_nll(model, batches(n=4))

    def dropping(ids, targets, **kwargs):
        targets = targets.clone()
        targets[:, -1] = IGNORE_INDEX
        return model.loss(ids, targets, **kwargs)

    broken = evaluate_perplexity(model, batches(n=4), loss=dropping)
    assert broken.loss != pytest.approx(expected, rel=1e-6)
