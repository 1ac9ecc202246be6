"""The last two stages: each task of the shards stage tokenizes its documents into `.npy` shards
of each split under <work>/tasks/<rank>/ (memory: one shard per split and one batch of texts),
then writes a summary of them; the manifest stage (one task) moves every task's shards to out_dir
under their final names (`<split>-<index>-<sha256 prefix>.npy`, numbered in task order) and
writes the manifest last. A rerun after an interruption finishes the rest."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from tokenizers import Tokenizer

from depthattn.data.prepared import (
    MANIFEST_NAME,
    MAX_LISTED_DOCUMENTS,
    TOKENIZER_DIR,
    finish_prepared,
    remove_stale_temp_files,
)
from depthattn.data.shards import save_tokens
from depthattn.data.split import check_both_sides, is_validation
from depthattn.data.tokenizer import (
    backend_json,
    eos_token_id,
    load_tokenizer,
    token_dtype,
    tokenizer_sha256,
    tokenizer_vocab_size,
)
from depthattn.utils.atomic import fsync_dir, write_json_atomic
from depthattn.utils.errors import DepthAttnError
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
        dtype = token_dtype(tokenizer_vocab_size(tok))
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
        path = out / name
        save_tokens(path, tokens)
        split.shards.append({
            "file": name, "num_tokens": int(tokens.size), "num_documents": shard.num_documents,
            "num_characters": shard.num_chars, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)})
        split.current = _OpenShard()


def read_summaries(work_dir: str | Path, tasks: int) -> list[dict[str, Any]]:
    missing = [r for r in range(tasks) if not (task_dir(work_dir, r) / SUMMARY).exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {tasks} tasks of the shards stage have not finished (first: "
            f"{task_dir(work_dir, missing[0])}); run the same command again to finish them")
    return [json.loads((task_dir(work_dir, r) / SUMMARY).read_text()) for r in range(tasks)]


class WriteManifest(PipelineStep):
    name = "📜 manifest"
    type = "📜 - MANIFEST"

    def __init__(self, work_dir: str, out_dir: str, tasks: int, source: str,
                 request: dict[str, Any], launched_at: float) -> None:
        super().__init__()
        self.work_dir, self.out_dir, self.tasks = work_dir, out_dir, tasks
        self.source, self.request, self.launched_at = source, request, launched_at

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1
            ) -> DocumentsPipeline:
        out = Path(self.out_dir)
        summaries = read_summaries(self.work_dir, self.tasks)
        tok = load_tokenizer(out / TOKENIZER_DIR)
        sha = tokenizer_sha256(tok)
        stale = [s["rank"] for s in summaries if s["tokenizer_sha256"] != sha]
        if stale:
            raise DepthAttnError(f"tasks {stale[:5]} tokenized with another tokenizer than "
                                 f"{out / TOKENIZER_DIR} (sha256 {sha[:16]}…); delete "
                                 f"{Path(self.work_dir) / 'tasks'} and run again")
        counts = [sum(s["splits"][name]["num_documents"] for s in summaries) for name in SPLITS]
        check_both_sides(*counts, self.request["val_fraction"])  # before anything is moved
        splits = {name: self._split(name, summaries, out) for name in SPLITS}
        fsync_dir(out)
        first = summaries[0]
        vocab = tokenizer_vocab_size(tok)
        tokenizer = {"sha256": sha, "vocab_size": vocab,
                     "eos_token_id": first["eos_token_id"]}
        started = time.perf_counter() - (time.time() - self.launched_at)
        listed = {s["file"] for split in splits.values() for s in split["shards"]}
        finish_prepared(out, out / MANIFEST_NAME, self.source, tokenizer, first["dtype"],
                        splits, self.request, started, listed)
        return
        yield  # a generator, as every datatrove step

    def _split(self, name: str, summaries: list[dict[str, Any]], out: Path) -> dict[str, Any]:
        shards: list[dict[str, Any]] = []
        names: list[str] | None = []
        for summary in summaries:
            part = summary["splits"][name]
            if names is not None:
                if part["documents"] is None or len(names) + len(part["documents"]) > \
                        MAX_LISTED_DOCUMENTS:
                    names = None  # too many to list
                else:
                    names.extend(part["documents"])
            for shard in part["shards"]:
                final = f"{name}-{len(shards):05d}-{shard['sha256'][:16]}.npy"
                moved = task_dir(self.work_dir, summary["rank"]) / shard["file"]
                if moved.exists():
                    os.replace(moved, out / final)
                elif not (out / final).exists():
                    raise FileNotFoundError(f"shard {moved} is gone and {out / final} is not "
                                            f"there; delete {self.work_dir} and run again")
                shards.append({"file": final, "num_tokens": shard["num_tokens"],
                               "num_documents": shard["num_documents"],
                               "bytes": shard["bytes"], "sha256": shard["sha256"]})
        num_documents = sum(s["num_documents"] for s in shards)
        return {"num_tokens": sum(s["num_tokens"] for s in shards),
                "num_documents": num_documents,
                "num_characters": sum(s["splits"][name]["num_characters"] for s in summaries),
                "documents": names,
                "shards": shards}
