"""The first steps of every datatrove stage that reads the corpus: this task's share of the
documents, read as `depthattn.data.sources` reads them, then cleaned (`clean.clean_text`).

Tasks share a corpus by file: a folder's files (`sources.folder_files`: its `.txt` and `.jsonl`
files, sorted by path) go to tasks in turn, and a `datasets` folder by contiguous row ranges
(`Dataset.shard`). A single text or JSONL file cannot be shared: task 0 reads it all. Every stage that reads the corpus must see the same documents in the same
order in each task, since datatrove's MinHash filter names documents by their position there.
"""

from __future__ import annotations

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
