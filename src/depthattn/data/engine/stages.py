"""The stages of a preparation on datatrove (see the package doc): which steps, over how many
tasks, reading and writing which folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datatrove.data import Document as TroveDocument
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.utils.hashing import HashConfig

from depthattn.data.engine.ledger import DocumentLedger
from depthattn.data.engine.manifest_step import WriteManifest
from depthattn.data.engine.reader import ReadCorpus
from depthattn.data.engine.shard_writer import WriteTokenShards
from depthattn.data.engine.tokenizer_steps import TokenizerSample, TrainTokenizer
from depthattn.data.engine.words import SpellingWords
from depthattn.data.prepared import TOKENIZER_DIR

# sha1, not datatrove's default xxhash: xxhash >= 4 refuses the str datatrove 0.10 passes it
HASHES = HashConfig(precision=64, hash_fc="sha1")


def document_text(doc: TroveDocument) -> str:
    """What exact copies share (module level: datatrove pickles its steps)."""
    return doc.text


@dataclass
class Stage:
    name: str
    pipeline: list[PipelineStep]
    tasks: int


def build_stages(*, source: str, text_field: str, out_dir: Path, work_dir: Path, tasks: int,
                 train_tokenizer: bool, vocab_size: int, tokenizer_record: dict[str, Any],
                 sample_chars: int, seed: int, val_fraction: float, shard_chars: int,
                 minhash: dict[str, int] | None, request: dict[str, Any],
                 launched_at: float) -> list[Stage]:
    """Near copies (``minhash``): datatrove's four MinHash stages, which drop exact copies too
    (identical texts, identical signatures). Without: its three exact-dedup stages, so that
    exact copies are dropped either way, and cannot straddle the split."""
    work, out = str(work_dir), str(out_dir)
    signatures, pairs, removals = (str(work_dir / name)
                                   for name in ("signatures", "buckets", "remove"))
    first: list[PipelineStep] = [ReadCorpus(source, text_field), DocumentLedger(work, False)]
    if train_tokenizer:
        first.append(TokenizerSample(work, sample_chars, seed, val_fraction))
    shards: list[PipelineStep] = [ReadCorpus(source, text_field), DocumentLedger(work, True)]
    stages = []
    if minhash is not None:
        config = MinhashConfig(**minhash, hash_config=HASHES)
        first.append(MinhashDedupSignature(signatures, config, language=SpellingWords()))
        stages += [
            Stage("signatures", first, tasks),
            Stage("buckets", [MinhashDedupBuckets(signatures, pairs, config=config)],
                  config.num_buckets),
            Stage("clusters", [MinhashDedupCluster(pairs, removals, config=config)], 1)]
        shards.append(MinhashDedupFilter(removals))
    else:
        exact = ExactDedupConfig(content_getter=document_text, hash_config=HASHES)
        first.append(ExactDedupSignature(signatures, exact))
        stages += [Stage("signatures", first, tasks),
                   Stage("duplicates", [ExactFindDedups(signatures, removals, exact)], 1)]
        shards.append(ExactDedupFilter(removals, exact))
    if train_tokenizer:
        stages.append(Stage("tokenizer", [TrainTokenizer(work, out, tasks, vocab_size,
                                                         tokenizer_record)], 1))
    shards.append(WriteTokenShards(work, str(out_dir / TOKENIZER_DIR), seed, val_fraction,
                                   shard_chars))
    stages.append(Stage("shards", shards, tasks))
    stages.append(Stage("manifest", [WriteManifest(work, out, tasks, request["source"], request,
                                                   launched_at)], 1))
    return stages
