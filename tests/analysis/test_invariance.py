"""Batching invariance table: within tolerance for every method and dtype, and a cache that
stores the wrong values (a deliberately broken variant) is caught."""

from __future__ import annotations

import pytest
import torch

from depthattn.analysis.invariance import (
    CASES,
    invariance_errors,
    invariance_markdown,
    invariance_table,
)
from depthattn.model.cache import KVCache
from tests.conftest import random_ids, tiny_model

TOLERANCE = {"float32": 1e-4, "bfloat16": 0.15}  # max |Δ logit|; bf16 has 8 mantissa bits
METHODS = ("vanilla", "value_residual", "depth_attention", "depth_attention+mhc")


def test_table_within_tolerance():
    rows = invariance_table({m: tiny_model(method=m, seed=1) for m in METHODS}, length=24,
                            extra=5)
    assert [(r["method"], r["dtype"]) for r in rows] == [
        (m, d) for m in METHODS for d in ("float32", "bfloat16")]
    for row in rows:
        for case in CASES:
            assert 0 <= row[case] < TOLERANCE[row["dtype"]], (row, case)
    assert len(invariance_markdown(rows)) == 2 + len(rows)


def test_a_cache_that_drops_the_mixed_value_is_caught(monkeypatch):
    model = tiny_model(method="depth_attention", seed=2)
    sequence, other = random_ids(1, 20, seed=3)[0], random_ids(1, 26, seed=4)[0]
    update = KVCache.update

    def broken(self, k, v, layer_idx):  # keeps the value of layer 3 at zero
        return update(self, k, v if layer_idx != 3 else torch.zeros_like(v), layer_idx)

    monkeypatch.setattr(KVCache, "update", broken)
    errors = invariance_errors(model, sequence, other)
    assert errors["token by token"] > 100 * TOLERANCE["float32"]
    assert errors["left-padded batch"] < TOLERANCE["float32"]  # no cache: unaffected


def test_the_other_sequence_must_be_longer():
    model = tiny_model(method="vanilla")
    with pytest.raises(ValueError, match="must be longer"):
        invariance_errors(model, random_ids(1, 8)[0], random_ids(1, 8)[0])
