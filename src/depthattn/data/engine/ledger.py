"""The documents a task read, recorded by the first stage and checked by the shards stage:
datatrove's dedup filters name documents by their position in a task's stream, so a corpus that
changed between the stages (a file added, a sync still running) would drop the wrong ones.
A pass-through step: how many documents, and a hash of their names in order."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from depthattn.utils.atomic import write_json_atomic

LEDGER_DIR = "ledger"


def ledger_file(work_dir: str | Path, rank: int) -> Path:
    return Path(work_dir) / LEDGER_DIR / f"{rank:05d}.json"


class DocumentLedger(PipelineStep):
    name = "🧾 document ledger"
    type = "📖 - READER"

    def __init__(self, work_dir: str, check: bool) -> None:
        super().__init__()
        self.work_dir, self.check = work_dir, check

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1
            ) -> DocumentsPipeline:
        path = ledger_file(self.work_dir, rank)
        expected = json.loads(path.read_text()) if self.check else None
        digest, count = hashlib.sha256(), 0
        for doc in data:
            digest.update(doc.id.encode() + b"\n")
            count += 1
            yield doc
        seen = {"documents": count, "names_sha256": digest.hexdigest()}
        if not self.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, seen)
        elif seen != expected:
            raise RuntimeError(
                f"task {rank} read other documents than in the first stage ({seen['documents']} "
                f"now, {expected['documents']} then; names differ: "
                f"{seen['names_sha256'] != expected['names_sha256']}): the corpus changed "
                f"between the stages; delete {self.work_dir} and prepare again")
