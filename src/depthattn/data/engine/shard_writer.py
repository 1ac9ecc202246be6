"""The last step of the shards stage: this task's documents, tokenized, into `.npy` shards of
each split (the format `TokenStream` reads: documents in order, each followed by EOS) under
<work>/tasks/<rank>/, and a summary of them written last. The manifest stage then gives the
shards their final names.

Memory: one shard of tokens (about `shard_chars` characters' worth) per split and one batch of
texts, whatever the size of the task's share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from tokenizers import Tokenizer

from depthattn.data.files import remove_stale_temp_files
from depthattn.data.manifest import MAX_LISTED_DOCUMENTS
from depthattn.data.split import is_validation
from depthattn.data.tokenizer import (
    backend_json,
    eos_token_id,
    load_tokenizer,
    token_dtype,
    tokenizer_sha256,
    tokenizer_vocab_size,
)
from depthattn.utils.atomic import atomic_write, write_json_atomic
from depthattn.utils.file_manifest import sha256_file

TASKS_DIR = "tasks"
SUMMARY = "summary.json"
SPLITS = ("train", "validation")
_BATCH_CHARS = 1 << 20  # characters of text encoded at once


def task_dir(work_dir: str | Path, rank: int) -> Path:
    return Path(work_dir) / TASKS_DIR / f"{rank:05d}"


@dataclass
class _OpenShard:
    parts: list[np.ndarray] = field(default_factory=list)
    num_documents: int = 0
    num_chars: int = 0


@dataclass
class _Split:
    name: str
    shards: list[dict[str, Any]] = field(default_factory=list)
    names: list[str] | None = field(default_factory=list)
    current: _OpenShard = field(default_factory=_OpenShard)

    def summary(self) -> dict[str, Any]:
        return {"shards": self.shards, "documents": self.names,
                "num_documents": sum(s["num_documents"] for s in self.shards),
                "num_characters": sum(s["num_characters"] for s in self.shards),
                "num_tokens": sum(s["num_tokens"] for s in self.shards)}


class WriteTokenShards(PipelineStep):
    name = "🧱 token shards"
    type = "🔢 - TOKENIZER"

    def __init__(self, work_dir: str, tokenizer_dir: str, seed: int, val_fraction: float,
                 shard_chars: int) -> None:
        super().__init__()
        self.work_dir, self.tokenizer_dir = work_dir, tokenizer_dir
        self.seed, self.val_fraction, self.shard_chars = seed, val_fraction, shard_chars

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1
            ) -> DocumentsPipeline:
        tok = load_tokenizer(self.tokenizer_dir)
        backend = Tokenizer.from_str(backend_json(tok))
        eos = eos_token_id(tok)
        dtype = token_dtype(max(tokenizer_vocab_size(tok), max(tok.get_vocab().values()) + 1))
        out = task_dir(self.work_dir, rank)
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out)  # an earlier attempt's, cut off mid-write
        splits = {name: _Split(name) for name in SPLITS}
        batch: list[tuple[_Split, str]] = []
        batch_chars = 0

        def encode() -> None:
            nonlocal batch_chars
            # no BOS/EOS from a post-processor: the separators are placed here
            encodings = backend.encode_batch_fast([t for _, t in batch], add_special_tokens=False)
            for (split, text), enc in zip(batch, encodings):
                shard = split.current
                shard.parts += [np.asarray(enc.ids, dtype=dtype), np.array([eos], dtype)]
                shard.num_documents += 1
                shard.num_chars += len(text)
                self.stat_update("tokens", value=len(enc.ids) + 1)
                if shard.num_chars >= self.shard_chars:
                    self._close(split, out, dtype)
            batch.clear()
            batch_chars = 0

        for doc in data:
            split = splits["validation" if is_validation(self.seed, doc.id, self.val_fraction)
                           else "train"]
            if split.names is not None:
                split.names.append(doc.id)
                if len(split.names) > MAX_LISTED_DOCUMENTS:
                    split.names = None  # too many to list, in this task already
            batch.append((split, doc.text))
            batch_chars += len(doc.text)
            self.stat_update(split.name)
            if batch_chars >= _BATCH_CHARS:
                with self.track_time():
                    encode()
        with self.track_time():
            if batch:
                encode()
            for split in splits.values():
                if split.current.num_documents:
                    self._close(split, out, dtype)
        listed = {s["file"] for split in splits.values() for s in split.shards}
        for stale in out.glob("*.npy"):  # from an earlier, interrupted attempt of this task
            if stale.name not in listed:
                stale.unlink()
        write_json_atomic(out / SUMMARY, {
            "rank": rank, "world_size": world_size, "tokenizer_sha256": tokenizer_sha256(tok),
            "dtype": dtype.name, "eos_token_id": eos,
            "splits": {name: split.summary() for name, split in splits.items()}})
        return
        yield  # a generator, as every datatrove step

    @staticmethod
    def _close(split: _Split, out: Path, dtype: np.dtype) -> None:
        shard = split.current
        tokens = np.concatenate(shard.parts)
        name = f"{split.name}-{len(split.shards):05d}.npy"
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
                np.save(f, tokens, allow_pickle=False)

        atomic_write(out / name, write)
        path = out / name
        split.shards.append({
            "file": name, "num_tokens": int(tokens.size), "num_documents": shard.num_documents,
            "num_characters": shard.num_chars, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)})
        split.current = _OpenShard()
