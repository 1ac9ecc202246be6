"""The last stage, one task: every task's shards moved to out_dir under their final names
(`<split>-<index>-<sha256 prefix>.npy`, numbered in task order), then the manifest, written last
and atomically by `prepared.finish_prepared`. A rerun after an
interruption finds the shards already moved and finishes the rest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from depthattn.data.engine.shard_writer import SPLITS, SUMMARY, task_dir
from depthattn.data.manifest import MANIFEST_NAME, MAX_LISTED_DOCUMENTS
from depthattn.data.prepared import TOKENIZER_DIR, finish_prepared
from depthattn.data.split import check_both_sides
from depthattn.data.tokenizer import (
    load_tokenizer,
    tokenizer_sha256,
    tokenizer_vocab_size,
)
from depthattn.utils.atomic import fsync_dir
from depthattn.utils.errors import DepthAttnError


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
        vocab = max(tokenizer_vocab_size(tok), max(tok.get_vocab().values()) + 1)
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
