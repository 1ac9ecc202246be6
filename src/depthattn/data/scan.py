"""The first pass of `prepare`: what is kept of each document, so that the text need not be.

Per distinct document (exact copies, by sha256 of the cleaned text, keep the first): its
character count (8 bytes), the sha256 of its text (32), the key that ranks it for the split (32),
and an entry in the set of text hashes seen (a 16-byte prefix: ≈ 80 bytes with the set's
overhead); ≈ 150 bytes per document in all, plus one flag byte per document read. Names are
kept only while there are at most `MAX_NAMES` documents (for log lines); the manifest's name
lists are collected again when the shards are written.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from depthattn.data.documents import Document
from depthattn.data.split import group_rank

logger = logging.getLogger(__name__)

MAX_NAMES = 100_000
Documents = Callable[[], Iterable[Document]]  # a fresh pass over the cleaned documents


@dataclass
class DocumentTable:
    unique: np.ndarray  # (documents read,) bool: the first copy of its text
    chars: np.ndarray  # (n,) int64, for the n unique documents
    sha256: np.ndarray  # (n, 32) uint8: digest of the text
    rank: np.ndarray  # (n,) S32: group_rank(seed, name)
    names: list[str] | None  # (n,) while n <= MAX_NAMES
    num_raw: int  # documents in the source, empty ones included

    def __len__(self) -> int:
        return len(self.chars)

    def name(self, i: int) -> str:
        return self.names[i] if self.names is not None else f"document {i}"


def scan(documents: Iterable[Document], seed: int, total_bytes: int | None = None,
         progress: bool = False) -> DocumentTable:
    """Read every (cleaned) document once; `documents` yields empty ones too, so they are
    counted. `total_bytes`: the input's size, for the progress bar's ETA."""
    seen: set[bytes] = set()
    unique, chars = bytearray(), array("q")
    digests, ranks = bytearray(), bytearray()
    names: list[str] | None = []
    num_raw = 0
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="reading",
               disable=not progress)
    for doc in documents:
        num_raw += 1
        bar.update(len(doc.text))  # characters: bytes for ASCII, close enough for an ETA
        if not doc.text:
            continue
        digest = hashlib.sha256(doc.text.encode("utf-8")).digest()
        if digest[:16] in seen:
            unique.append(0)
            continue
        seen.add(digest[:16])
        unique.append(1)
        chars.append(len(doc.text))
        digests += digest
        ranks += group_rank(seed, doc.name)
        if names is not None:
            names.append(doc.name)
            if len(names) > MAX_NAMES:
                names = None
    bar.close()
    n = len(chars)
    if len(unique) > n:
        logger.info("dropped %d exactly duplicated documents", len(unique) - n)
    return DocumentTable(
        unique=np.frombuffer(bytes(unique), dtype=np.uint8).astype(bool),
        chars=np.frombuffer(chars, dtype=np.int64).copy(),
        sha256=np.frombuffer(bytes(digests), dtype=np.uint8).reshape(n, 32),
        rank=np.frombuffer(bytes(ranks), dtype="S32"),
        names=names, num_raw=num_raw)


def unique_documents(documents: Documents, table: DocumentTable) -> Iterator[tuple[int, Document]]:
    """(index, document) of the unique documents, in order, from a fresh pass; the texts are
    checked against the first pass's hashes, so a corpus edited in between is not mixed."""
    i = -1
    non_empty = 0
    for doc in documents():
        if not doc.text:
            continue
        if non_empty >= len(table.unique):
            raise RuntimeError("the corpus changed while it was read: more documents than in "
                               "the first pass")
        first = table.unique[non_empty]
        non_empty += 1
        if not first:
            continue
        i += 1
        if hashlib.sha256(doc.text.encode("utf-8")).digest() != bytes(table.sha256[i]):
            raise RuntimeError(f"the corpus changed while it was read: {doc.name} differs from "
                               f"the first pass")
        yield i, doc
    if non_empty != len(table.unique):
        raise RuntimeError(f"the corpus changed while it was read: {non_empty} documents, "
                           f"{len(table.unique)} in the first pass")
