"""Tokenize documents and pack them into flat, EOS-separated `.npy` shards, streaming.

Shards are planned from what is kept per document (its index, character count and text hash;
consecutive documents until `shard_chars`), and a shard's file name carries a fingerprint of
everything that determines its content (tokenizer, dtype, EOS id, the texts). So a file with that
name is a finished, valid shard: writes go to a temporary name and are moved into place with
`os.replace`, and a rerun skips such shards.

The documents then stream past once: consecutive ones of a shard are gathered into chunks of
`chunk_chars`, worker processes tokenize the chunks and return the ids, and the parent appends
them to the shard's parts file on disk; once a shard's last document is back, the shard is
written from it in the shard's order. So the result does not depend on the number of workers or
on the order in which documents arrive. Memory: at most `2 * num_workers + 2` chunks in flight,
8 bytes per planned document, and 16 bytes per document of each shard still open — the tokens
themselves never wait in memory.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from depthattn.utils.atomic import atomic_write, temp_path

logger = logging.getLogger(__name__)

PACK_VERSION = 1  # bump when the shard content for the same inputs changes


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids below 65536; larger vocabularies need uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    documents: np.ndarray  # indices of its documents, in order
    num_chars: int
    fingerprint: str

    @property
    def file_name(self) -> str:
        return f"{self.split}-{self.index:05d}-{self.fingerprint[:16]}.npy"


def consecutive_groups(lengths: Sequence[int], max_chars: int) -> list[tuple[int, int]]:
    """[start, end) ranges of consecutive items, a new range starting once one has `max_chars`
    characters."""
    ranges: list[tuple[int, int]] = []
    size, start = max_chars, 0  # size = max_chars forces a new range for the first item
    for i, length in enumerate(lengths):
        if size >= max_chars:
            if i:
                ranges.append((start, i))
            start, size = i, 0
        size += int(length)
    if len(lengths):
        ranges.append((start, len(lengths)))
    return ranges


def plan_shards(split: str, documents: np.ndarray, lengths: np.ndarray, sha256: np.ndarray,
                shard_chars: int, tokenizer_sha256: str, dtype: np.dtype,
                eos_id: int) -> list[ShardPlan]:
    """Group consecutive documents into shards of about `shard_chars` characters.
    `documents`: their indices, in order; `lengths`, `sha256`: character counts and text
    digests (32 bytes) of every document, by index."""
    plans = []
    for index, (start, end) in enumerate(consecutive_groups(lengths[documents], shard_chars)):
        members = documents[start:end]
        h = hashlib.sha256(f"{PACK_VERSION}:{tokenizer_sha256}:{dtype.name}:{eos_id}".encode())
        for i in members:
            h.update(bytes(sha256[i]).hex().encode())
        plans.append(ShardPlan(split, index, members, int(lengths[members].sum()),
                               h.hexdigest()))
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


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ids of doc 1, EOS, ids of doc 2, EOS, ... as one flat array, and each document's number
    of ids with its EOS (a text may itself hold the EOS token's text)."""
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
    ids = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    return ids, np.array([len(enc.ids) + 1 for enc in encodings], dtype=np.int64)


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


class _Shard:
    """A shard being assembled. Its documents arrive in stream order, which is not always the
    shard's order (a group of related documents is kept together, though its members may lie
    far apart in the input), so each document's ids go to a temporary parts file as they come
    back, and the shard is put together in its order once its last document is in. Nothing but
    offsets stays in memory, however long the shard waits."""

    def __init__(self, plan: ShardPlan, out_dir: Path) -> None:
        self.plan = plan
        self.parts_path = temp_path(out_dir / (plan.file_name + ".parts"))
        self.parts = None  # opened on the first document
        self.spans = np.zeros((len(plan.documents), 2), dtype=np.int64)  # (offset, length)
        self.written = 0  # tokens in the parts file
        self.texts: list[str] = []  # the chunk being gathered, and its documents' positions
        self.positions: list[int] = []
        self.chars = 0
        self.gathered = 0  # documents seen in the stream
        self.received = 0  # documents whose ids came back

    def add(self, positions: list[int], ids: np.ndarray, doc_lengths: np.ndarray) -> None:
        if self.parts is None:
            self.parts = open(self.parts_path, "wb")  # noqa: SIM115 (closed in finish)
        self.spans[positions, 0] = self.written + np.cumsum(doc_lengths) - doc_lengths
        self.spans[positions, 1] = doc_lengths
        self.parts.write(ids.tobytes())
        self.written += len(ids)
        self.received += len(positions)

    @property
    def complete(self) -> bool:
        return self.received == len(self.plan.documents)

    def finish(self, path: Path, dtype: np.dtype) -> int:
        """Write the shard in its order (atomically) and remove the parts file."""
        assert self.parts is not None
        self.parts.close()
        try:
            parts = np.memmap(self.parts_path, dtype=dtype, mode="r", shape=(self.written,))

            def write(tmp: Path) -> None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                                shape=(self.written,))
                at = 0
                for offset, length in self.spans.tolist():
                    out[at:at + length] = parts[offset:offset + length]
                    at += length
                out.flush()
                del out

            atomic_write(path, write)
        finally:
            self.parts_path.unlink(missing_ok=True)
        logger.info("wrote %s (%d tokens)", path.name, self.written)
        return self.written

    def discard(self) -> None:
        if self.parts is not None:
            self.parts.close()
        self.parts_path.unlink(missing_ok=True)


def pack_shards(plans: Sequence[ShardPlan], documents: Iterable[tuple[int, str]], out_dir: Path,
                tokenizer_json: str, eos_id: int, dtype: np.dtype, num_workers: int = 1,
                chunk_chars: int = 1 << 18, progress: bool = True) -> dict[str, int]:
    """Write every planned shard that is not finished yet, from `documents`: (index, text) of
    every planned document, in stream order (others are ignored). Returns {file name: tokens}.
    """
    lengths: dict[str, int] = {}
    todo: dict[int, _Shard] = {}  # by position in `plans`
    # per document index (4 + 4 bytes): the position of its shard in `plans` (-1: none to
    # write), and its own position in that shard
    size = 1 + max((int(p.documents.max()) for p in plans if len(p.documents)), default=-1)
    owner = np.full(size, -1, dtype=np.int32)
    slot = np.zeros(size, dtype=np.int32)
    for k, plan in enumerate(plans):
        n = finished_length(out_dir / plan.file_name, dtype)
        if n is None:
            todo[k] = _Shard(plan, out_dir)
            owner[plan.documents] = k
            slot[plan.documents] = np.arange(len(plan.documents))
        else:
            lengths[plan.file_name] = n
    if lengths:
        logger.info("%d of %d shards already finished, skipping them", len(lengths), len(plans))
    if not todo:
        return lengths
    bar = tqdm(total=int((owner >= 0).sum()), unit="doc", desc="tokenizing",
               disable=not progress)
    tokens = 0
    in_flight: deque[tuple[_Shard, list[int], cf.Future | tuple]] = deque()

    def collect() -> None:
        nonlocal tokens
        shard, positions, result = in_flight.popleft()
        ids, doc_lengths = result.result() if isinstance(result, cf.Future) else result
        shard.add(positions, ids, doc_lengths)
        tokens += len(ids)
        bar.update(len(positions))
        bar.set_postfix(tokens=f"{tokens:,}", refresh=False)
        if shard.complete:
            lengths[shard.plan.file_name] = shard.finish(out_dir / shard.plan.file_name, dtype)

    try:
        with _executor(num_workers, (tokenizer_json, eos_id, dtype.name)) as pool:
            def submit(shard: _Shard) -> None:
                texts, positions = shard.texts, shard.positions
                shard.texts, shard.positions, shard.chars = [], [], 0
                result = pool.submit(_encode_chunk, texts) if pool is not None \
                    else _encode_chunk(texts)
                in_flight.append((shard, positions, result))
                while len(in_flight) > 2 * num_workers + 2:
                    collect()

            for index, text in documents:
                k = int(owner[index]) if index < size else -1
                if k < 0:
                    continue
                shard = todo[k]
                shard.texts.append(text)
                shard.positions.append(int(slot[index]))
                shard.chars += len(text)
                shard.gathered += 1
                if shard.gathered == len(shard.plan.documents) or shard.chars >= chunk_chars:
                    submit(shard)
            while in_flight:
                collect()
    finally:
        bar.close()
        for shard in todo.values():
            if not shard.complete:
                shard.discard()
    missing = [s.plan.file_name for s in todo.values() if s.plan.file_name not in lengths]
    if missing:
        raise RuntimeError(f"the corpus changed while it was read: documents of {missing[0]} "
                           f"(and {len(missing) - 1} more shards) never came")
    return lengths
