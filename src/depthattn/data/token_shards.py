"""Write `.npy` shards (the format `TokenStream` reads) straight from memory-mapped token arrays.

A shard is documents in input order, each followed by EOS. Documents that lie back to back in
their input with the EOS already between them (the usual case for .bin/.npy) are copied as one
block; the copy goes through a bounded buffer to a file object, so memory does not grow with
the shard, and the file is hashed on the way. Writes are atomic (a shard with its final name is
complete), so a rerun keeps shards that exist.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from depthattn.data.files import sha256_file
from depthattn.data.shards import finished_length
from depthattn.data.token_sources import TokenArray
from depthattn.utils.atomic import atomic_write

_BLOCK = 1 << 22  # tokens per write


@dataclass(frozen=True)
class Documents:
    """Every document of the inputs, in order: which array, and its span there."""

    array: np.ndarray  # int32 index into the list of TokenArrays
    start: np.ndarray  # int64
    end: np.ndarray  # int64
    separated: np.ndarray  # bool: EOS follows at `end` inside the array

    @classmethod
    def of(cls, arrays: Sequence[TokenArray]) -> Documents:
        return cls(np.concatenate([np.full(len(a.starts), i, np.int32)
                                   for i, a in enumerate(arrays)]),
                   np.concatenate([a.starts for a in arrays]),
                   np.concatenate([a.ends for a in arrays]),
                   np.concatenate([a.separated for a in arrays]))

    def __len__(self) -> int:
        return len(self.start)

    def lengths(self, index: np.ndarray) -> np.ndarray:
        """Tokens each document takes in a shard, EOS included."""
        return self.end[index] - self.start[index] + 1


def plan(docs: Documents, index: np.ndarray, shard_tokens: int) -> list[np.ndarray]:
    """Split the documents `index` (in order) into shards: a shard takes the documents that
    start within its `shard_tokens`; a document is never cut."""
    if not len(index):
        return []
    lengths = docs.lengths(index)
    first = np.cumsum(lengths) - lengths  # offset of each document in the split
    _, shard = np.unique(first // shard_tokens, return_inverse=True)
    bounds = np.flatnonzero(np.diff(shard)) + 1
    return np.split(index, bounds)


def _runs(docs: Documents, index: np.ndarray) -> list[tuple[int, int, int, bool]]:
    """(array, start, end, separated) of maximal back-to-back runs of the documents `index`."""
    a, s, e, sep = docs.array[index], docs.start[index], docs.end[index], docs.separated[index]
    joined = (a[1:] == a[:-1]) & (s[1:] == e[:-1] + 1) & sep[:-1]
    firsts = np.r_[0, np.flatnonzero(~joined) + 1]
    lasts = np.r_[firsts[1:] - 1, len(index) - 1]
    return [(int(a[f]), int(s[f]), int(e[la]), bool(sep[la])) for f, la in zip(firsts, lasts)]


def _write(path: Path, arrays: Sequence[TokenArray], docs: Documents, index: np.ndarray,
           dtype: np.dtype, eos_id: int, bar: tqdm) -> str:
    """Write one shard; returns its sha256."""
    n = int(docs.lengths(index).sum())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": (n,)})
    digest = hashlib.sha256()
    eos = np.array([eos_id], dtype)

    def put(f, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=dtype).tobytes()  # ids < vocab: a safe cast
        f.write(data)
        digest.update(data)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header.getvalue())
            digest.update(header.getvalue())
            for array, start, end, separated in _runs(docs, index):
                tokens = arrays[array].tokens
                stop = end + 1 if separated else end  # the run's own trailing EOS, if it has one
                for lo in range(start, stop, _BLOCK):
                    put(f, tokens[lo:min(lo + _BLOCK, stop)])
                    bar.update(min(lo + _BLOCK, stop) - lo)
                if not separated:
                    put(f, eos)

    atomic_write(path, write)
    return digest.hexdigest()


def write_shards(out_dir: Path, names: Sequence[str], shards: Sequence[np.ndarray],
                 arrays: Sequence[TokenArray], docs: Documents, dtype: np.dtype, eos_id: int,
                 progress: bool = True) -> list[tuple[int, str]]:
    """Write each shard not yet finished; returns (tokens, sha256) per shard."""
    results = []
    todo = sum(int(docs.lengths(s).sum()) for n, s in zip(names, shards)
               if finished_length(out_dir / n, dtype) is None)
    with tqdm(total=todo, unit="tok", unit_scale=True, desc="writing shards",
              disable=not progress) as bar:
        for name, index in zip(names, shards, strict=True):
            path = out_dir / name
            n = int(docs.lengths(index).sum())
            if finished_length(path, dtype) == n:
                results.append((n, sha256_file(path)))
            else:
                results.append((n, _write(path, arrays, docs, index, dtype, eos_id, bar)))
    return results
