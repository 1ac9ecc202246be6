"""measure_speeds: one pass, vanilla first and its ratios exactly 1, every number positive, the
activation bytes deterministic (the same measure as benchmarks/methods.py)."""

from __future__ import annotations

import pytest

from depthattn.analysis.speed import (
    format_speed_table,
    measure_speeds,
    saved_activation_bytes,
)
from tests.conftest import random_ids, tiny_config, tiny_model

SMALL = dict(rounds=3, batch_size=2, seq_len=8, decode_batches=(1, 2), context=6, new_tokens=2,
             device="cpu")


def test_every_method_gets_every_column_against_vanilla():
    speeds = measure_speeds(tiny_config(), ["mhc", "depth_attention"], **SMALL)
    assert list(speeds) == ["vanilla", "mhc", "depth_attention"]  # vanilla added, first
    base = speeds["vanilla"]
    assert base.train_ratio == base.activation_ratio == 1.0
    assert base.decode_ratio == {1: 1.0, 2: 1.0}
    for s in speeds.values():
        assert s.train_tokens_per_s > 0 and s.activation_bytes > 0
        assert set(s.decode_tokens_per_s) == {1, 2} and min(s.decode_tokens_per_s.values()) > 0
        assert s.train_ratio == s.train_tokens_per_s / base.train_tokens_per_s
        assert s.decode_ratio[2] == s.decode_tokens_per_s[2] / base.decode_tokens_per_s[2]
    assert speeds["mhc"].activation_ratio > 1  # n streams of d saved per sublayer
    table = format_speed_table(speeds)
    assert "decode b2 tok/s" in table and "\nmhc " in table


def test_labels_with_options_and_an_explicit_vanilla():
    config = tiny_config()
    runs = {"da-stride-1": config.with_method("depth_attention", stride=1),
            "vanilla": config.with_method("vanilla")}
    speeds = measure_speeds(config, runs, **{**SMALL, "rounds": 1, "decode_batches": (1,)})
    assert list(speeds) == ["vanilla", "da-stride-1"]


def test_activation_bytes_are_deterministic_and_count_the_streams():
    ids = random_ids(2, 8)
    vanilla = tiny_model().train()
    assert saved_activation_bytes(vanilla, ids) == saved_activation_bytes(vanilla, ids)
    assert all(p.grad is None for p in vanilla.parameters())  # gradients dropped
    assert saved_activation_bytes(tiny_model(method="mhc").train(), ids) > \
        saved_activation_bytes(vanilla, ids)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"rounds \(0\)"):
        measure_speeds(tiny_config(), ["mhc"], **{**SMALL, "rounds": 0})
    with pytest.raises(ValueError, match=r"decode_mode \('lazy'\)"):
        measure_speeds(tiny_config(), ["mhc"], **{**SMALL, "decode_mode": "lazy"})
    with pytest.raises(ValueError, match=r"at least one method"):
        measure_speeds(tiny_config(), {}, **SMALL)
