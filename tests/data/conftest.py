"""Synthetic corpora for the data tests: small, deterministic, and already clean text.

Documents are built from a fixed word list with an explicit seed, so every test sees the same
text; they contain no trailing spaces or runs of blank lines, so cleaning leaves them unchanged
and `decode(shard)` can be compared with the files byte for byte.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = ("the king queen lord lady good night day heart love death blood sword crown fair "
         "sweet noble gentle speak hear come go stay fly thou thee thy my our your his her "
         "what why where when how now then here there heaven earth sea fire air honour grace "
         "Hamlet Romeo Juliet Milton Paradise garden serpent angel tempest island storm ship "
         "é ö — “quoted” it's o'er 'tis").split()


def make_text(seed: int, n_words: int = 400) -> str:
    """Verse-like lines of 5-9 words, blank line every few lines."""
    rng = random.Random(seed)
    lines, words = [], 0
    while words < n_words:
        k = rng.randint(5, 9)
        line = " ".join(rng.choice(WORDS) for _ in range(k))
        lines.append(line[0].upper() + line[1:] + rng.choice([",", ".", ";", "!", "?"]))
        words += k
        if rng.random() < 0.2:
            lines.append("")
    return "\n".join(lines).strip()


def write_corpus(folder: Path, n_docs: int = 12, n_words: int = 400, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for i in range(n_docs):
        text = make_text(seed * 1000 + i, n_words)
        (folder / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
        texts.append(text)
    return texts


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "corpus")
    return tmp_path / "corpus"


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared folder shared by read-only tests (several train shards, small BPE)."""
    from depthattn.data import prepare

    root = tmp_path_factory.mktemp("prepared")
    write_corpus(root / "corpus", n_docs=16, n_words=600)
    return prepare(root / "corpus", out_dir=root / "out", vocab_size=400, num_workers=1,
                   val_fraction=0.2, shard_chars=8000, progress=False)
