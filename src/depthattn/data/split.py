"""Deterministic train/validation splits, by document, from names and sizes alone: grouped (the
default corpus, `split_groups`), hashed per document (the datatrove engine, `is_validation`), or
a number of items drawn by the seed (token imports, `held_out`); see docs/data.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from depthattn.data.sources import Document
from depthattn.utils.errors import DepthAttnError

# A group may overshoot the validation target by this factor before it is skipped, so one large
# group (e.g. Paradise Lost) does not take several times the requested share.
_OVERSHOOT = 1.5


def group_rank(seed: int, first_name: str) -> bytes:
    """The key that orders groups for validation: a hash of (seed, name of its first document)."""
    return hashlib.sha256(f"{seed}:{first_name}".encode()).digest()


def check_val_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise DepthAttnError(f"val_fraction must be in (0, 1), got {val_fraction}")


def validation_groups(sizes: Sequence[int], ranks: Sequence[bytes],
                      val_fraction: float) -> set[int]:
    """Indices of the groups that go to validation, taken in rank order, from their sizes
    (characters): about `val_fraction` of the characters; at least one group on each side."""
    check_val_fraction(val_fraction)
    if len(sizes) < 2:
        raise DepthAttnError(
            f"the corpus has {len(sizes)} independent document group(s) after its copies are "
            f"dropped; "
            f"a split by document needs at least 2 (one for training, one for validation)")
    target = val_fraction * sum(sizes)
    order = sorted(range(len(sizes)), key=lambda i: ranks[i])
    val: set[int] = set()
    val_chars = 0
    for i in order:
        if val_chars >= target:
            break
        if val_chars + sizes[i] <= _OVERSHOOT * target:
            val.add(i)
            val_chars += sizes[i]
    if not val:  # every group is larger than the target: take the smallest, in hashed order
        val.add(min(order, key=lambda i: sizes[i]))
    if len(val) == len(sizes):
        val.remove(max(val, key=lambda i: sizes[i]))
    return val


def split_groups(
    groups: Sequence[Sequence[Document]], val_fraction: float, seed: int = 0,
) -> tuple[list[Document], list[Document]]:
    """Return (train, validation) documents, each in input order (see `validation_groups`)."""
    val = validation_groups([sum(len(d.text) for d in g) for g in groups],
                            [group_rank(seed, g[0].name) for g in groups], val_fraction)
    train_docs = [d for i, g in enumerate(groups) if i not in val for d in g]
    val_docs = [d for i, g in enumerate(groups) if i in val for d in g]
    return train_docs, val_docs


def is_validation(seed: int, name: str, val_fraction: float) -> bool:
    return _uniform(group_rank(seed, name)) < val_fraction


def sample_draw(seed: int, name: str) -> float:
    """Uniform in [0, 1), independent of `is_validation`: the datatrove engine's tokenizer
    sample takes the documents of smallest draw."""
    return _uniform(hashlib.sha256(f"tokenizer-sample:{seed}:{name}".encode()).digest())


def _uniform(digest: bytes) -> float:
    return int.from_bytes(digest[:8], "little") / 2.0**64


def check_both_sides(train: int, validation: int, val_fraction: float) -> None:
    """Refuse a split with an empty side, naming the counts (documents)."""
    for name, count in (("train", train), ("validation", validation)):
        if not count:
            raise DepthAttnError(
                f"the {name} split is empty ({train} train, {validation} validation "
                f"documents): the corpus is too small for val_fraction {val_fraction}; give "
                f"more documents, another val_fraction or another seed")


def held_out(count: int, val_fraction: float, seed: int, what: str) -> np.ndarray:
    """Sorted indices of the `count` items (files or documents) that go to validation:
    round(val_fraction * count) of them, at least one, and never all; drawn by `seed` alone."""
    check_val_fraction(val_fraction)
    if count < 2:
        raise DepthAttnError(f"the input has {count} {what}; a split by {what} needs at least 2 "
                             f"(one for training, one for validation)")
    n_val = min(max(1, round(val_fraction * count)), count - 1)
    return np.sort(np.random.default_rng(seed).choice(count, n_val, replace=False))
