"""The tokenizer at scale: each task keeps a sample of its training documents (`TokenizerSample`,
a pass-through step of the first stage: those of smallest `split.sample_draw`, up to
ceil(sample_chars / tasks) characters, the last one cut), and one task trains the BPE on the
samples of all (`TrainTokenizer`)."""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from depthattn.data.prepared import TOKENIZER_DIR, save_trained_tokenizer
from depthattn.data.split import is_validation, sample_draw
from depthattn.data.tokenizer import train_bpe
from depthattn.utils.atomic import atomic_write

logger = logging.getLogger(__name__)

SAMPLE_DIR = "tokenizer_sample"


def sample_file(work_dir: str | Path, rank: int) -> Path:
    return Path(work_dir) / SAMPLE_DIR / f"{rank:05d}.jsonl"


class TokenizerSample(PipelineStep):
    name = "🎲 tokenizer sample"
    type = "🔢 - TOKENIZER"

    def __init__(self, work_dir: str, sample_chars: int, seed: int, val_fraction: float) -> None:
        super().__init__()
        self.work_dir, self.sample_chars = work_dir, sample_chars
        self.seed, self.val_fraction = seed, val_fraction

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1
            ) -> DocumentsPipeline:
        quota = math.ceil(self.sample_chars / world_size)
        heap: list[tuple[float, str]] = []  # (-draw, text): the largest draw on top
        held = 0
        for doc in data:
            if not is_validation(self.seed, doc.id, self.val_fraction):
                heapq.heappush(heap, (-sample_draw(self.seed, doc.id), doc.text))
                held += len(doc.text)
                # drop the largest draws while the others alone fill the quota
                while held - len(heap[0][1]) >= quota:
                    held -= len(heapq.heappop(heap)[1])
            yield doc
        chosen = [text for _, text in sorted(heap, reverse=True)]  # smallest draw first

        def write(tmp: Path) -> None:
            left = quota
            with open(tmp, "w", encoding="utf-8") as f:
                for text in chosen:
                    if left <= 0:
                        break
                    f.write(json.dumps({"text": text[:left]}) + "\n")
                    left -= min(len(text), left)

        path = sample_file(self.work_dir, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
        self.stat_update("sample_characters", value=min(held, quota))


def _sample_texts(work_dir: str, tasks: int) -> Iterator[str]:
    for rank in range(tasks):
        with open(sample_file(work_dir, rank), encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]


class TrainTokenizer(PipelineStep):
    """One task: the BPE of `vocab_size` on every task's sample, into out_dir/tokenizer."""

    name = "🔤 train the tokenizer"
    type = "🔢 - TOKENIZER"

    def __init__(self, work_dir: str, out_dir: str, tasks: int, vocab_size: int,
                 record: dict) -> None:
        super().__init__()
        self.work_dir, self.out_dir, self.tasks = work_dir, out_dir, tasks
        self.vocab_size, self.record = vocab_size, record

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1
            ) -> DocumentsPipeline:
        folder = Path(self.out_dir) / TOKENIZER_DIR
        missing = [r for r in range(self.tasks) if not sample_file(self.work_dir, r).exists()]
        if missing:
            raise FileNotFoundError(f"tokenizer samples of tasks {missing[:5]} are missing in "
                                    f"{Path(self.work_dir) / SAMPLE_DIR}: the first stage did "
                                    f"not finish")
        with self.track_time():
            tokenizer = train_bpe(_sample_texts(self.work_dir, self.tasks), self.vocab_size)
        save_trained_tokenizer(folder, tokenizer, self.record, replace=True)
        logger.info("trained the tokenizer on the samples of %d tasks into %s", self.tasks,
                    folder)
        return
        yield  # a generator, as every datatrove step
