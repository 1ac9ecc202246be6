"""`import_tokens`: pre-tokenized corpora -> the prepared folder training reads, without
re-tokenizing (`depthattn prepare --tokens ...`; see docs/data.md).

The inputs are checked against the given tokenizer before anything is written (its EOS id, found
in the token files; every id below its vocabulary size). Shards are written straight from the
memory-mapped inputs: documents lying back to back with their EOS between them are copied as
one block, through a bounded buffer, hashed on the way.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from depthattn.data.defaults import DEFAULT_SHARD_TOKENS, DEFAULT_TOKEN_COLUMN, SPLIT_BY
from depthattn.data.prepared import (
    MANIFEST_NAME,
    MAX_LISTED_DOCUMENTS,
    cache_dir,
    check_not_built_with_other,
    finish_prepared,
    is_prepared,
    remove_stale_temp_files,
    store_given_tokenizer,
)
from depthattn.data.shards import finished_length
from depthattn.data.split import check_val_fraction, held_out
from depthattn.data.token_sources import (
    TokenArray,
    check_inputs,
    dataset_documents,
    flat_documents,
    open_flat,
    scan,
)
from depthattn.data.tokenizer import (
    check_vocab_fits,
    eos_token_id,
    load_tokenizer,
    token_dtype,
    tokenizer_sha256,
    tokenizer_vocab_size,
)
from depthattn.utils.atomic import atomic_write
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.file_manifest import sha256_file

logger = logging.getLogger(__name__)

IMPORT_VERSION = 1  # bump when the shards for the same inputs change
_BLOCK = 1 << 22  # tokens per write


def _check_arguments(val_fraction: float, split_by: str, seed: int, shard_tokens: int) -> None:
    check_val_fraction(val_fraction)
    if split_by not in SPLIT_BY:
        raise DepthAttnError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    if seed < 0:
        raise DepthAttnError(f"seed must be non-negative, got {seed}")
    if shard_tokens < 1:
        raise DepthAttnError(f"shard_tokens must be positive, got {shard_tokens}")


def _check_eos(tokenizer, eos_id: int | None) -> int:
    """The EOS id of the files, which must be the tokenizer's EOS token."""
    tok_eos = eos_token_id(tokenizer)
    if eos_id is not None and eos_id != tok_eos:
        token = tokenizer.convert_ids_to_tokens(eos_id) if 0 <= eos_id < len(tokenizer) else None
        raise DepthAttnError(
            f"the token files separate documents with id {eos_id} (--eos-id), but the "
            f"tokenizer's EOS token {tokenizer.eos_token!r} has id {tok_eos} (id {eos_id} is "
            f"{token!r} in it); give the tokenizer the files were made with")
    return tok_eos


def _fingerprint(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256("".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}\n"
                                  for p in files).encode()).hexdigest()


def default_tokens_out_dir(inputs: list[Path], tokenizer_sha: str) -> Path:
    """<cache>/prepared/tokens-<first input>-<hash of inputs and tokenizer>."""
    key = "\n".join(str(p.resolve()) for p in inputs) + tokenizer_sha
    return cache_dir() / "prepared" / (
        f"tokens-{inputs[0].stem}-{hashlib.sha256(key.encode()).hexdigest()[:8]}")


def _read(inputs: list[Path], dtype: str | None, column: str, eos_id: int, vocab: int,
          progress: bool) -> tuple[list[TokenArray], list[int]]:
    """All inputs as TokenArrays (and the input each came from), ids checked against `vocab`."""
    arrays, owner, separators = [], [], 0
    flats = {p: open_flat(p, dtype) for p in inputs if not p.is_dir()}
    with tqdm(total=sum(len(a) for a in flats.values()) or None, unit="tok", unit_scale=True,
              desc="checking ids", disable=not progress) as bar:
        for i, path in enumerate(inputs):
            if path in flats:
                largest, eos = scan(flats[path], eos_id, bar)
                separators += len(eos)
                found = [flat_documents(path.name, flats[path], eos)]
            else:
                largest, found = dataset_documents(path, column, eos_id, bar)
            if largest >= vocab:
                raise DepthAttnError(f"{path} holds token id {largest}, but the tokenizer has "
                                     f"{vocab} tokens (ids 0..{vocab - 1}); give the tokenizer "
                                     f"the files were made with")
            if not sum(len(a.starts) for a in found):
                raise DepthAttnError(f"{path} holds no documents (only EOS ids {eos_id} or empty "
                                     f"rows)")
            arrays += found
            owner += [i] * len(found)
    if flats and not separators:
        _refuse_no_separator(flats, eos_id)
    return arrays, owner


def _refuse_no_separator(flats: dict[Path, np.ndarray], eos_id: int) -> None:
    """Token files that never hold the tokenizer's EOS were made with another tokenizer (or
    another separator): imported, each file would silently be one document."""
    path, tokens = next(iter(flats.items()))
    counts = np.bincount(np.asarray(tokens[:1 << 24], dtype=np.int64))
    common = int(counts.argmax())
    raise DepthAttnError(
        f"none of the {sum(len(t) for t in flats.values())} ids in the token files is the "
        f"tokenizer's EOS id {eos_id}, which separates documents; the most frequent id in "
        f"{path.name} is {common} ({counts[common] / counts.sum():.1%} of its first "
        f"{counts.sum()}): give the tokenizer the files were made with (and --eos-id if they "
        f"separate documents with another id), or end each document with id {eos_id}")


def _names(arrays: list[TokenArray], docs: Documents, index: np.ndarray) -> list[str] | None:
    if len(index) > MAX_LISTED_DOCUMENTS:
        return None
    first = np.cumsum([0] + [len(a.starts) for a in arrays])  # global index of each array's 1st
    return [f"{arrays[a].name}:{int(i - first[a])}" for a, i in zip(docs.array[index], index)]


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


def import_tokens(
    inputs: list[str | Path],
    tokenizer: str | Path,
    out_dir: str | Path | None = None,
    eos_id: int | None = None,
    dtype: str | None = None,
    val_fraction: float = 0.05,
    split_by: str = "documents",
    seed: int = 0,
    column: str = DEFAULT_TOKEN_COLUMN,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = True,
    model_vocab_size: int | None = None,
) -> Path:
    """Write train/validation shards from `inputs` (in order: .npy / .bin files of flat ids
    separated by `eos_id`, default and must be the tokenizer's EOS; `datasets` folders, a
    document per row of `column`) made with `tokenizer`; returns the path of manifest.json.
    dtype: of .bin files (default uint16), a check for .npy; split_by: hold out a fraction of
    the "documents" or of the "files"; shard_tokens: per shard (a document is never cut)."""
    started = time.perf_counter()
    paths = [Path(p) for p in inputs]
    _check_arguments(val_fraction, split_by, seed, shard_tokens)
    check_inputs(paths, dtype)
    tok = load_tokenizer(tokenizer)
    eos = _check_eos(tok, eos_id)
    sha = tokenizer_sha256(tok)
    vocab = tokenizer_vocab_size(tok)
    if model_vocab_size is not None:
        check_vocab_fits(vocab, model_vocab_size)
    out_dir = Path(out_dir) if out_dir is not None else default_tokens_out_dir(paths, sha)
    if out_dir.exists() and not out_dir.is_dir():
        raise DepthAttnError(f"out_dir {out_dir} exists and is not a folder")
    if split_by == "files" and len(paths) < 2:
        raise DepthAttnError(f"a split by files needs at least 2 inputs, got {len(paths)}")
    request: dict[str, Any] = {
        "tokens": [[str(p.resolve()), _fingerprint(p)] for p in paths],
        "tokenizer": {"sha256": sha}, "eos_id": eos, "dtype": dtype, "column": column,
        "val_fraction": val_fraction, "split_by": split_by, "seed": seed,
        "shard_tokens": shard_tokens, "import_version": IMPORT_VERSION,
    }
    manifest_file = out_dir / MANIFEST_NAME
    if manifest_file.exists():
        check_not_built_with_other(out_dir, sha, "the given tokenizer")
    if is_prepared(out_dir, request):
        return manifest_file

    # --- read and check everything before anything is written ---
    arrays, owner = _read(paths, dtype, column, eos, vocab, progress)
    docs = Documents.of(arrays)
    if split_by == "files":
        val_files = set(held_out(len(paths), val_fraction, seed, "files").tolist())
        in_val = np.isin(docs.array, [a for a, o in enumerate(owner) if o in val_files])
    else:
        in_val = np.zeros(len(docs), bool)
        in_val[held_out(len(docs), val_fraction, seed, "documents")] = True
    out_dtype = token_dtype(vocab)
    logger.info("%d documents in %d inputs: %d train, %d validation", len(docs), len(paths),
                int((~in_val).sum()), int(in_val.sum()))

    # --- tokenizer, shards, then the manifest ---
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)
    store_given_tokenizer(out_dir, tok)
    tag = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    splits = {}
    for split, index in (("train", np.flatnonzero(~in_val)), ("validation", np.flatnonzero(in_val))):
        shards = plan(docs, index, shard_tokens)
        names = [f"{split}-{k:05d}-{hashlib.sha256(f'{tag}:{split}:{k}'.encode()).hexdigest()[:16]}.npy"
                 for k in range(len(shards))]
        written = write_shards(out_dir, names, shards, arrays, docs, out_dtype, eos, progress)
        splits[split] = {
            "num_tokens": sum(n for n, _ in written),
            "num_documents": len(index),
            "documents": _names(arrays, docs, index),
            "shards": [{"file": name, "num_tokens": n, "num_documents": len(s),
                        "bytes": (out_dir / name).stat().st_size, "sha256": digest}
                       for name, s, (n, digest) in zip(names, shards, written)],
        }
    return finish_prepared(out_dir, manifest_file,
                           "tokens:" + ",".join(str(p.resolve()) for p in paths),
                           {"sha256": sha, "vocab_size": vocab, "eos_token_id": eos},
                           out_dtype.name, splits, request, started,
                           {s["file"] for v in splits.values() for s in v["shards"]})
