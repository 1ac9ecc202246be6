"""The splits: grouped (the default corpus), hashed (the datatrove engine), and the check that
neither side is empty."""

from __future__ import annotations

import pytest

from depthattn.data.sources import Document
from depthattn.data.split import (
    check_both_sides,
    is_validation,
    sample_draw,
    split_groups,
)
from tests.conftest import make_text


def test_split_is_deterministic_disjoint_and_keeps_groups_together():
    groups = [[Document(f"g{i}a", make_text(i, 200)), Document(f"g{i}b", make_text(50 + i, 200))]
              for i in range(20)]
    train, val = split_groups(groups, val_fraction=0.2, seed=3)
    assert (train, val) == split_groups(groups, val_fraction=0.2, seed=3)
    assert split_groups(groups, val_fraction=0.2, seed=4) != (train, val)
    train_names, val_names = {d.name for d in train}, {d.name for d in val}
    assert not train_names & val_names
    assert len(train_names | val_names) == 40
    for i in range(20):  # a group is never split
        assert (f"g{i}a" in val_names) == (f"g{i}b" in val_names)
    share = sum(len(d.text) for d in val) / sum(len(d.text) for g in groups for d in g)
    assert 0.1 <= share <= 0.3


def test_split_does_not_depend_on_input_order():
    groups = [[Document(f"d{i}", make_text(i, 200))] for i in range(10)]
    _, val = split_groups(groups, 0.3)
    _, val_reversed = split_groups(groups[::-1], 0.3)
    assert {d.name for d in val} == {d.name for d in val_reversed}


def test_split_needs_two_groups_and_a_sane_fraction():
    with pytest.raises(ValueError, match="1 independent document group"):
        split_groups([[Document("only", "text")]], 0.1)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1.5"):
        split_groups([[Document("a", "x")], [Document("b", "y")]], 1.5)


def test_split_always_has_a_validation_and_a_training_document():
    groups = [[Document("big", "x" * 1000)], [Document("bigger", "y" * 2000)]]
    train, val = split_groups(groups, 0.01)
    assert len(train) == 1 and len(val) == 1


def test_the_hashed_split_holds_out_about_val_fraction_by_name_alone():
    names = [f"part{i % 7}.jsonl:{i}" for i in range(4000)]
    held = [n for n in names if is_validation(0, n, 0.1)]
    assert 0.08 < len(held) / len(names) < 0.12
    assert held == [n for n in names if is_validation(0, n, 0.1)]  # the same on every call
    assert held != [n for n in names if is_validation(1, n, 0.1)]  # another seed, another split
    # the tokenizer's draw is independent of the split's
    draws = [sample_draw(0, n) for n in held]
    assert 0.4 < sum(draws) / len(draws) < 0.6


def test_an_empty_side_is_named_with_the_counts():
    check_both_sides(3, 1, 0.05)
    with pytest.raises(ValueError, match=r"the validation split is empty \(3 train, 0 validation "
                                         r"documents\): the corpus is too small for "
                                         r"val_fraction 0.01"):
        check_both_sides(3, 0, 0.01)
    with pytest.raises(ValueError, match=r"the train split is empty \(0 train, 2 validation"):
        check_both_sides(0, 2, 0.5)
