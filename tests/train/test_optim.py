"""AdamW groups and the warmup + cosine schedule of the paper's recipe."""

from __future__ import annotations

import math

import pytest

from depthattn.train.optim import lr_factor, parameter_groups
from tests.conftest import tiny_model


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    total, warmup_ratio, floor = 100, 0.1, 0.1
    factors = [lr_factor(s, total, warmup_ratio, floor) for s in range(total)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(floor)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # monotone decay
    mid = 10 + (total - 1 - 10) / 2
    assert lr_factor(math.floor(mid), total, warmup_ratio, floor) == pytest.approx(
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * math.floor(mid - 10) / 89)))


def test_weight_decay_on_matrices_only():
    model = tiny_model(method="depth_attention")
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
