"""Tokenize documents and pack them into flat, EOS-separated `.npy` shards, in parallel.

Shards are planned from the documents alone (consecutive documents until `shard_chars`), and a
shard's file name carries a fingerprint of everything that determines its content (tokenizer,
dtype, EOS id, the texts). So a file with that name is a finished, valid shard: writes go to a
temporary name and are moved into place with `os.replace`, and a rerun skips such shards.

Worker processes tokenize chunks of documents (`chunk_chars` each) and return the ids; the
parent assembles each shard in document order, so the result does not depend on the number of
workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from depthattn.data.documents import Document
from depthattn.data.files import sha256_text
from depthattn.utils.atomic import atomic_write

logger = logging.getLogger(__name__)

PACK_VERSION = 1  # bump when the shard content for the same inputs changes


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids below 65536; larger vocabularies need uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    docs: tuple[Document, ...]
    fingerprint: str

    @property
    def file_name(self) -> str:
        return f"{self.split}-{self.index:05d}-{self.fingerprint[:16]}.npy"

    @property
    def num_chars(self) -> int:
        return sum(len(d.text) for d in self.docs)


def consecutive_groups(docs: Sequence[Document], max_chars: int) -> list[list[Document]]:
    """Consecutive documents, a new group starting once a group has `max_chars` characters."""
    groups: list[list[Document]] = []
    size = max_chars  # forces a new group for the first document
    for doc in docs:
        if size >= max_chars:
            groups.append([])
            size = 0
        groups[-1].append(doc)
        size += len(doc.text)
    return groups


def plan_shards(split: str, docs: Sequence[Document], shard_chars: int, tokenizer_sha256: str,
                dtype: np.dtype, eos_id: int) -> list[ShardPlan]:
    """Group consecutive documents into shards of about `shard_chars` characters."""
    plans = []
    for index, group in enumerate(consecutive_groups(docs, shard_chars)):
        h = hashlib.sha256(f"{PACK_VERSION}:{tokenizer_sha256}:{dtype.name}:{eos_id}".encode())
        for doc in group:
            h.update(sha256_text(doc.text).encode())
        plans.append(ShardPlan(split, index, tuple(group), h.hexdigest()))
    return plans


def finished_length(path: Path, dtype: np.dtype) -> int | None:
    """Token count of a finished shard at `path`, or None if it is absent or unreadable."""
    if not path.exists():
        return None
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        logger.warning("redoing unreadable shard %s (%s)", path.name, e)
        return None
    if array.dtype != dtype or array.ndim != 1:
        logger.warning("redoing shard %s: it holds %s%s, expected 1-D %s",
                       path.name, array.dtype, array.shape, dtype)
        return None
    return int(array.shape[0])


# --- worker side: one tokenizer per process, set once by the pool initializer ---------------

_worker: dict[str, object] = {}


def _init_worker(tokenizer_json: str, eos_id: int, dtype: str) -> None:
    _worker.update(tokenizer=Tokenizer.from_str(tokenizer_json), eos_id=eos_id,
                   dtype=np.dtype(dtype))


def _encode_chunk(texts: list[str]) -> np.ndarray:
    """ids of doc 1, EOS, ids of doc 2, EOS, ... as one flat array."""
    tokenizer: Tokenizer = _worker["tokenizer"]  # type: ignore[assignment]
    dtype: np.dtype = _worker["dtype"]  # type: ignore[assignment]
    eos = np.array([_worker["eos_id"]], dtype=dtype)
    # No BOS/EOS from a post-processor (Qwen's, GPT-NeoX's): we place the separators ourselves.
    # The _fast variant skips character offsets we do not need (~1.3x faster).
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    parts = []
    for enc in encodings:
        parts.append(np.asarray(enc.ids, dtype=dtype))
        parts.append(eos)
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


# --- parent side ------------------------------------------------------------------------------

@contextmanager
def _executor(num_workers: int, init_args: tuple) -> Iterator[cf.Executor | None]:
    if num_workers <= 1:
        _init_worker(*init_args)
        try:
            yield None
        finally:
            _worker.clear()
        return
    # fork is cheap (no re-import of torch/transformers per worker) and the workers only run
    # tokenizers and numpy. Tokenizers' own thread pool is switched off in them: the processes
    # are the parallelism, and it would otherwise warn that it was forked after use.
    method = "fork" if sys.platform.startswith("linux") else "spawn"  # fork is unsafe on macOS
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with cf.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context(method),
                                    initializer=_init_worker, initargs=init_args) as pool:
            yield pool
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def pack_shards(plans: Sequence[ShardPlan], out_dir: Path, tokenizer_json: str, eos_id: int,
                dtype: np.dtype, num_workers: int = 1, chunk_chars: int = 1 << 18,
                progress: bool = True) -> dict[str, int]:
    """Write every planned shard that is not finished yet; returns {file name: token count}."""
    lengths: dict[str, int] = {}
    todo = []
    for plan in plans:
        n = finished_length(out_dir / plan.file_name, dtype)
        if n is None:
            todo.append(plan)
        else:
            lengths[plan.file_name] = n
    if lengths:
        logger.info("%d of %d shards already finished, skipping them", len(lengths), len(plans))
    if not todo:
        return lengths
    # Tasks in shard order; the parent collects each shard's chunks, then writes it.
    tasks = [(plan, [d.text for d in chunk]) for plan in todo
             for chunk in consecutive_groups(plan.docs, chunk_chars)]
    remaining = {plan.file_name: sum(1 for p, _ in tasks if p is plan) for plan in todo}
    pieces: dict[str, list[np.ndarray]] = {plan.file_name: [] for plan in todo}
    bar = tqdm(total=sum(p.num_chars for p in todo), unit="char", unit_scale=True,
               desc="tokenizing", disable=not progress)
    with _executor(num_workers, (tokenizer_json, eos_id, dtype.name)) as pool:
        results = (pool.map(_encode_chunk, [c for _, c in tasks]) if pool is not None
                   else map(_encode_chunk, [c for _, c in tasks]))
        for (plan, chunk), ids in zip(tasks, results, strict=True):  # map keeps task order
            pieces[plan.file_name].append(ids)
            bar.update(sum(len(t) for t in chunk))
            remaining[plan.file_name] -= 1
            if remaining[plan.file_name] == 0:
                tokens = np.concatenate(pieces.pop(plan.file_name))
                _write_shard(out_dir / plan.file_name, tokens)
                lengths[plan.file_name] = len(tokens)
    bar.close()
    return lengths


def _save_array(tokens: np.ndarray, tmp: Path) -> None:
    with open(tmp, "wb") as f:  # a file object, so np.save does not append ".npy" to the name
        np.save(f, tokens)


def _write_shard(path: Path, tokens: np.ndarray) -> None:
    atomic_write(path, lambda tmp: _save_array(tokens, tmp))
    logger.info("wrote %s (%d tokens)", path.name, len(tokens))
