"""The stages of a preparation on datatrove, each a pipeline over N tasks or one:

1. signatures (N): read + clean -> ledger -> [tokenizer sample] -> MinHash signatures;
2. buckets (one task per MinHash band): duplicate pairs;
3. clusters (1): the documents to drop;
4. tokenizer (1, when none is given): the BPE on the tasks' samples;
5. shards (N): read + clean -> ledger check -> drop copies -> split -> token shards;
6. manifest (1): the shards under their final names, then manifest.json.

Without near-duplicate removal, datatrove's exact-dedup stages take the place of 1-3 and of the
filter in 5: exact copies are dropped either way. MinHash's words are `SpellingWords`.
"""

from __future__ import annotations

import re
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
from datatrove.utils.word_tokenizers import WordTokenizer

from depthattn.data.engine.reader import DocumentLedger, ReadCorpus
from depthattn.data.engine.shards import WriteManifest, WriteTokenShards
from depthattn.data.engine.tokenizer_steps import TokenizerSample, TrainTokenizer
from depthattn.data.prepared import TOKENIZER_DIR

# sha1, not datatrove's default xxhash: xxhash >= 4 refuses the str datatrove 0.10 passes it
HASHES = HashConfig(precision=64, hash_fc="sha1")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z]+")
_DOUBLE = re.compile(r"(.)\1")
_OLD_LETTERS = str.maketrans("vj", "ui")  # early modern printing used u/v and i/j alike


class SpellingWords(WordTokenizer):
    """Lower-case letter words by spelling key, so a First Folio's words meet their modern
    spelling: u/v and i/j merged, a final e dropped, doubled letters undoubled ("Heauen" ->
    "heaun", "heaven" -> "heavn"; "selfe" -> "self"). (datatrove's own English word
    tokenizers need spaCy or NLTK and their data.)"""

    def __init__(self) -> None:
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return [_DOUBLE.sub(r"\1", w.rstrip("e"))
                for w in _WORD.findall(text.lower().translate(_OLD_LETTERS))]

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in _SENTENCE_END.split(text) if s]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"[^.!?]+[.!?]*", text)]


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
