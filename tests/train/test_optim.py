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


def test_methods_decide_the_decay_of_their_parameters():
    """AttnRes decays its pseudo-queries (a vector), as the Depth-Attention authors' comparison
    did; every other connection vector is left undecayed and every matrix decayed."""
    from depthattn.train.optim import decays

    model = tiny_model(method="attnres")
    rule = decays(model)
    queries = [n for n in rule if n.startswith("model.cross_layer.") and n.endswith(".query")]
    assert queries and all(rule[n] for n in queries)
    params = dict(model.named_parameters())
    for name, decayed in rule.items():
        if not name.endswith(".query"):
            assert decayed == (params[name].dim() >= 2), name
    decay, _ = parameter_groups(model, 0.1)
    assert {id(params[n]) for n in queries} <= {id(p) for p in decay["params"]}


def test_a_combined_method_asks_its_parts():
    from depthattn.train.optim import decays

    rule = decays(tiny_model(method="depth_attention+attnres"))
    queries = [n for n in rule if n.endswith(".query")]
    assert queries and all(n.startswith("model.cross_layer.parts.attnres.") for n in queries)
    assert all(rule[n] for n in queries)
    assert not rule["model.layers.0.input_layernorm.weight"]
    assert rule["model.layers.0.self_attn.q_proj.weight"]
