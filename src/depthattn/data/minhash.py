"""Candidate pairs of documents that may contain one another, from MinHash signatures.

Containment here is |A ∩ B| / |A| for the smaller set A, and thresholds go as low as 0.05 (a poem
quoted in an annotated edition). A small set inside a large one has a tiny Jaccard similarity
J = c|A| / (|A| + |B| - c|A|) even at containment c = 1, so a Jaccard LSH tuned to one threshold
misses it. As in LSH Ensemble (Zhu et al., VLDB 2016, https://arxiv.org/abs/1603.07410), the
Jaccard bound is set per pair from the two set sizes:

1. proposals: two documents whose signatures agree on at least one permutation (LSH with bands
   of one row; the sets here are *rare* 3-grams, each in at most a few documents, so a value is
   shared by a few documents only and the proposals stay few);
2. test: the fraction of agreeing permutations, an unbiased estimate of J with standard error
   sqrt(J (1 - J) / P), must reach J* - 3 standard errors, where J* is the Jaccard that
   containment `threshold` gives for the two sizes.

They are candidates, not answers: the caller measures every candidate pair exactly, so false
positives only cost time. A pair at containment >= threshold is missed only when no permutation
agrees, probability (1 - J)^P: 10% at the tightest pair of the default corpus (The Passionate
Pilgrim inside Love's Labour's Lost, J = 0.009, P = 256), which is found.

Memory: the signatures, P uint64 per document (2 KiB at P = 256), plus one column sort at a time;
unlike datasketch's MinHashLSHEnsemble, which keeps its band keys as Python bytes in one
`MinHashLSH` per (partition, r) and needs all documents before indexing, nothing else grows with
the corpus. The signatures themselves are datasketch's MinHash values.
"""

from __future__ import annotations

import numpy as np
from datasketch import MinHash

NUM_PERM = 256  # a pair of Jaccard J is missed with probability (1 - J)^NUM_PERM
SEED = 1  # the permutations; fixed, so the candidates are the same on every run
_BATCH = 8192  # set elements per update_batch: bounds its (batch, NUM_PERM) temporary
_Z = 3.0  # standard errors of slack in the Jaccard test
_PAIR_CHUNK = 4096  # pairs compared at once in the test: (chunk, NUM_PERM) booleans
EMPTY = np.iinfo(np.uint64).max  # datasketch's value for a permutation that saw no element


def signature(codes: np.ndarray, num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash of a set of 64-bit codes (already hashes, so the hash function is the identity),
    as `num_perm` uint64."""
    m = MinHash(num_perm=num_perm, seed=SEED, hashfunc=int, scheme="affine64")
    for start in range(0, len(codes), _BATCH):
        m.update_batch(codes[start:start + _BATCH].tolist())
    return np.asarray(m.hashvalues, dtype=np.uint64)


def signature_bytes(num_perm: int = NUM_PERM) -> int:
    """Bytes of index per document."""
    return 8 * num_perm


def _proposals(signatures: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Sorted unique pairs (i, j), i < j, of members agreeing on at least one permutation,
    as an (m, 2) int64 array."""
    found: list[np.ndarray] = []
    for k in range(signatures.shape[1]):
        column = signatures[members, k]
        order = np.argsort(column, kind="stable")
        values = column[order]
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        sizes = np.diff(np.r_[starts, len(values)])
        for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            ids = np.sort(members[order[start:start + size]])
            a, b = np.triu_indices(size, k=1)
            found.append(np.stack([ids[a], ids[b]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found).astype(np.int64), axis=0)


def candidate_pairs(signatures: np.ndarray, sizes: np.ndarray,
                    threshold: float) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j, whose signatures say that the smaller set may have containment
    >= `threshold` in the other (see module doc). `signatures`: (n, P) uint64; `sizes`: (n,)
    set sizes. Empty sets take part in no pair."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sizes = np.asarray(sizes, dtype=np.float64)
    members = np.flatnonzero(sizes > 0)
    if len(members) < 2:
        return set()
    pairs = _proposals(signatures, members)
    num_perm = signatures.shape[1]
    kept = []
    for start in range(0, len(pairs), _PAIR_CHUNK):
        chunk = pairs[start:start + _PAIR_CHUNK]
        estimate = (signatures[chunk[:, 0]] == signatures[chunk[:, 1]]).mean(axis=1)
        q = np.minimum(sizes[chunk[:, 0]], sizes[chunk[:, 1]])
        x = np.maximum(sizes[chunk[:, 0]], sizes[chunk[:, 1]])
        bound = threshold * q / (x + q - threshold * q)  # J at containment `threshold`
        slack = _Z * np.sqrt(bound * (1 - bound) / num_perm)
        kept.append(chunk[estimate >= bound - slack])
    return {(int(i), int(j)) for part in kept for i, j in part}
