"""The data tests' prepared folder; the synthetic corpus it is built from (and the
``corpus_dir`` fixture) is shared with other folders and lives in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_corpus


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared folder shared by read-only tests (several train shards, small BPE)."""
    from depthattn.data import prepare

    root = tmp_path_factory.mktemp("prepared")
    write_corpus(root / "corpus", n_docs=16, n_words=600)
    # seed 1: 4 of the 16 documents held out (each with probability 0.2, by a hash of its name)
    return prepare(root / "corpus", out_dir=root / "out", vocab_size=400, num_workers=1,
                   val_fraction=0.2, seed=1, shard_chars=8000, progress=False)
