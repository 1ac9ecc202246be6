"""Which side of the split a document goes to, and whether the tokenizer sees it, from its name
alone: every task decides for its own documents, with nothing shared between tasks.

`prepare` (one machine) holds out whole groups of related documents until the validation share
of characters is reached; here each document is held out with probability `val_fraction`, by a
hash of (seed, name), so the expected share of characters is the same."""

from __future__ import annotations

import hashlib

from depthattn.data.split import group_rank


def _uniform(digest: bytes) -> float:
    return int.from_bytes(digest[:8], "little") / 2.0**64


def is_validation(seed: int, name: str, val_fraction: float) -> bool:
    return _uniform(group_rank(seed, name)) < val_fraction


def sample_draw(seed: int, name: str) -> float:
    """Uniform in [0, 1), independent of `is_validation`: the tokenizer sample takes the
    documents of smallest draw."""
    return _uniform(hashlib.sha256(f"tokenizer-sample:{seed}:{name}".encode()).digest())
