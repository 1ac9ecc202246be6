"""Document frequencies of 3-grams in fixed memory: a count-min sketch (Cormode & Muthukrishnan,
2005, https://doi.org/10.1016/j.jalgor.2003.12.001).

`dedup` needs to know which 3-grams are rare (in at most a few documents). An exact count keeps
every distinct 3-gram of the corpus, which grows with it; the sketch keeps `depth` rows of
`width` saturating uint8 counters (24 MiB by default) whatever the corpus size. Each row counts,
per bucket, the documents holding at least one 3-gram that hashes there, so the minimum over the
rows never underestimates a 3-gram's document frequency: a rare 3-gram may be taken for a common
one (and ignored), never the reverse. On the default corpus (≈ 2.5 M document-3-gram pairs in
8 M buckets per row) that happens to practically none.
"""

from __future__ import annotations

import numpy as np

DEPTH = 3
WIDTH_BITS = 23
# odd 64-bit multipliers, one per row (multiply-shift hashing)
_MULTIPLIERS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                         0xD6E8FEB86659FD93], dtype=np.uint64)


class DocumentFrequency:
    def __init__(self, depth: int = DEPTH, width_bits: int = WIDTH_BITS) -> None:
        if not 1 <= depth <= len(_MULTIPLIERS):
            raise ValueError(f"depth must be in [1, {len(_MULTIPLIERS)}], got {depth}")
        self.width_bits = width_bits
        self.counts = np.zeros((depth, 1 << width_bits), dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        return self.counts.nbytes

    def _buckets(self, row: int, codes: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # wrap-around multiplication is the hash
            return (codes * _MULTIPLIERS[row]) >> np.uint64(64 - self.width_bits)

    def add_document(self, codes: np.ndarray) -> None:
        """Count one document holding the 3-grams `codes` (each bucket once per document)."""
        for row in range(len(self.counts)):
            buckets = self._buckets(row, codes)
            # one increment per bucket and document, however many of its codes land there
            current = self.counts[row, buckets]
            self.counts[row, buckets] = np.minimum(current, 254) + 1

    def estimate(self, codes: np.ndarray) -> np.ndarray:
        """Upper bounds of the documents holding each code (saturating at 255)."""
        out = self.counts[0, self._buckets(0, codes)]
        for row in range(1, len(self.counts)):
            out = np.minimum(out, self.counts[row, self._buckets(row, codes)])
        return out
