"""The first steps of every datatrove stage that reads the corpus: this task's share of the
documents, read as `depthattn.data.sources` reads them and cleaned, then the ledger that checks
each stage reads the same ones (datatrove's dedup filters name documents by their position).

Tasks share a folder by file (in turn, sorted by path), a `datasets` folder by contiguous row
ranges (`Dataset.shard`); a single text or JSONL file goes to task 0 whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document as TroveDocument
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from depthattn.data.clean import clean_text
from depthattn.data.sources import (
    Document,
    folder_files,
    is_datasets_folder,
    iter_datasets_folder,
    iter_folder,
    iter_local_source,
)
from depthattn.utils.atomic import write_json_atomic

LEDGER_DIR = "ledger"


def shareable_parts(source: str) -> int:
    """How many tasks can get documents: files of a folder, 1 for a single file; a `datasets`
    folder can be shared by any number (by rows)."""
    if is_datasets_folder(Path(source)):
        return 1 << 30
    path = Path(source)
    return len(folder_files(path)) if path.is_dir() else 1


def task_documents(source: str, text_field: str, rank: int, world_size: int
                   ) -> Iterator[Document]:
    """The raw documents of task `rank` of `world_size`, in a fixed order."""
    path = Path(source)
    if is_datasets_folder(path):
        yield from iter_datasets_folder(path, text_field, shard=(rank, world_size))
    elif path.is_dir():
        yield from iter_folder(path, text_field, folder_files(path)[rank::world_size])
    elif rank == 0:
        yield from iter_local_source(path, text_field)


class ReadCorpus(PipelineStep):
    """This task's documents, cleaned (`clean_text`); empty ones are dropped here, in every
    stage alike. A document's id is its name in the corpus (file, file:line, folder/split:row)."""

    name = "📖 read and clean"
    type = "📖 - READER"

    def __init__(self, source: str, text_field: str = "text") -> None:
        super().__init__()
        self.source = source
        self.text_field = text_field

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        for doc in task_documents(self.source, self.text_field, rank, world_size):
            text = clean_text(doc.text)
            self.stat_update("documents")
            if not text:
                self.stat_update("empty")
                continue
            with self.track_time():
                yield TroveDocument(text=text, id=doc.name)


def ledger_file(work_dir: str | Path, rank: int) -> Path:
    return Path(work_dir) / LEDGER_DIR / f"{rank:05d}.json"


class DocumentLedger(PipelineStep):
    """Pass-through: how many documents, and a hash of their names in order (written by the
    first stage, checked by the shards stage)."""

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
