"""The stages of a preparation on datatrove (see the package doc): which steps, over how many
tasks, reading and writing which folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.utils.hashing import HashConfig

from depthattn.data.prepared import TOKENIZER_DIR
from depthattn.data.scale.manifest_step import WriteManifest
from depthattn.data.scale.reader import ReadCorpus
from depthattn.data.scale.shard_writer import WriteTokenShards
from depthattn.data.scale.tokenizer_steps import TokenizerSample, TrainTokenizer
from depthattn.data.scale.words import SpellingWords


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
    work, out = str(work_dir), str(out_dir)
    # sha1, not datatrove's default xxhash: xxhash >= 4 refuses the str datatrove 0.10 passes
    config = (MinhashConfig(**minhash, hash_config=HashConfig(precision=64, hash_fc="sha1"))
              if minhash else None)
    signatures, buckets, removals = (str(work_dir / name)
                                     for name in ("signatures", "buckets", "remove"))
    stages = []
    first: list[PipelineStep] = [ReadCorpus(source, text_field)]
    if train_tokenizer:
        first.append(TokenizerSample(work, sample_chars, seed, val_fraction))
    if config is not None:
        first.append(MinhashDedupSignature(signatures, config, language=SpellingWords()))
    if len(first) > 1:
        stages.append(Stage("signatures" if config else "tokenizer_sample", first, tasks))
    if config is not None:
        stages.append(Stage("buckets", [MinhashDedupBuckets(signatures, buckets, config=config)],
                            config.num_buckets))
        stages.append(Stage("clusters", [MinhashDedupCluster(buckets, removals, config=config)],
                            1))
    if train_tokenizer:
        stages.append(Stage("tokenizer", [TrainTokenizer(work, out, tasks, vocab_size,
                                                         tokenizer_record)], 1))
    shards: list[PipelineStep] = [ReadCorpus(source, text_field)]
    if config is not None:
        shards.append(MinhashDedupFilter(removals))
    shards.append(WriteTokenShards(work, str(out_dir / TOKENIZER_DIR), seed, val_fraction,
                                   shard_chars))
    stages.append(Stage("shards", shards, tasks))
    stages.append(Stage("manifest", [WriteManifest(work, out, tasks, request["source"], request,
                                                   launched_at)], 1))
    return stages
