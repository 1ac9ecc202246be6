"""Deterministic train/validation split by document (or by group of related documents).

Validation text must never be seen in training, so whole groups from `dedup.deduplicate_and_group`
go to one side. The order in which groups are considered for validation comes from a hash of
(seed, group name), not from the input order, so it does not depend on how the files were listed
and one document more or less does not reshuffle the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from depthattn.data.documents import Document

# A group may overshoot the validation target by this factor before it is skipped, so one large
# group (e.g. Paradise Lost) does not take several times the requested share.
_OVERSHOOT = 1.5


def group_rank(seed: int, first_name: str) -> bytes:
    """The key that orders groups for validation: a hash of (seed, name of its first document)."""
    return hashlib.sha256(f"{seed}:{first_name}".encode()).digest()


def validation_groups(sizes: Sequence[int], ranks: Sequence[bytes],
                      val_fraction: float) -> set[int]:
    """Indices of the groups that go to validation, from their sizes (characters) and ranks
    alone, so a streaming preparation decides without holding any text.

    Validation gets about `val_fraction` of the characters, and at least one group; training
    keeps at least one group.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(sizes) < 2:
        raise ValueError(
            f"the corpus has {len(sizes)} independent document group(s) after de-duplication; "
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


def held_out(count: int, val_fraction: float, seed: int, what: str) -> np.ndarray:
    """Sorted indices of the `count` items (files or documents) that go to validation:
    round(val_fraction * count) of them, at least one, and never all; drawn by `seed` alone."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if count < 2:
        raise ValueError(f"the input has {count} {what}; a split by {what} needs at least 2 "
                         f"(one for training, one for validation)")
    n_val = min(max(1, round(val_fraction * count)), count - 1)
    return np.sort(np.random.default_rng(seed).choice(count, n_val, replace=False))
