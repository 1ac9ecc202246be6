"""The streaming preparation against the in-memory definitions it replaces: the same documents,
split and order; the tokenizer's sample; the pieces that keep memory fixed."""

from __future__ import annotations

import json
import re

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from depthattn.data import TokenStream, load_tokenizer, prepare, read_manifest
from depthattn.data.dedup import deduplicate_and_group
from depthattn.data.documents import Document
from depthattn.data.frequency import DocumentFrequency
from depthattn.data.pipeline import _documents, tokenizer_sample
from depthattn.data.scan import scan
from depthattn.data.sources import iter_text_file
from depthattn.data.split import split_groups
from tests.conftest import make_text
from tests.data.test_dedup_split import folio_spelling

FAST = {"vocab_size": 400, "num_workers": 1, "val_fraction": 0.2, "progress": False}


def test_groups_far_apart_in_the_input_are_written_together(tmp_path):
    """A group's members come together in the shards, as split_groups orders them, even when
    the input puts them far apart and across shard boundaries."""
    poem = make_text(3, 150)
    texts = [make_text(100 + i, 300) for i in range(30)]
    texts[2] = make_text(4, 900) + "\n" + poem  # quotes the poem ...
    texts[27] = poem + "\n" + make_text(5, 900)  # ... which opens a document 25 later
    texts[20] = folio_spelling(texts[5])  # a near copy, dropped
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    manifest = prepare(path, out_dir=tmp_path / "out", near_duplicates=True, shard_chars=6000,
                       seed=1, **FAST)
    docs = [Document(f"docs.jsonl:{i + 1}", t) for i, t in enumerate(texts)]
    train, val = split_groups(deduplicate_and_group(docs), 0.2, seed=1)
    info = read_manifest(manifest)["splits"]
    assert info["train"]["documents"] == [d.name for d in train]
    assert info["validation"]["documents"] == [d.name for d in val]
    assert len(train) + len(val) == 29 and len(info["train"]["shards"]) > 3
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    for split, expected in (("train", train), ("validation", val)):
        stream = TokenStream(manifest, split)
        ids = stream.read(0, stream.num_tokens)
        pieces = np.split(ids, np.flatnonzero(ids == stream.eos_token_id) + 1)[:-1]
        assert [tok.decode(p[:-1].tolist()) for p in pieces] == [d.text for d in expected]
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]


def test_the_tokenizer_sample_is_bounded_spread_and_from_training_only(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(60):
        (folder / f"d{i:02d}.txt").write_text(make_text(i, 200), encoding="utf-8")
    documents = _documents(folder, "text")
    table = scan(documents(), seed=0)
    train = np.arange(0, 60, 2)  # the even documents
    total = int(table.chars[train].sum())
    texts, chars = tokenizer_sample(documents, table, train, total // 3)
    sample = list(texts)
    assert chars == total // 3 and sum(map(len, sample)) <= chars
    by_text = {d.text: int(d.name[1:3]) for d in documents()}
    whole = [by_text[t] for t in sample if t in by_text]
    assert len(whole) >= len(sample) - 1  # only the last one may be cut
    assert all(i % 2 == 0 for i in whole) and max(whole) > 40  # training only, not a prefix
    everything, chars = tokenizer_sample(documents, table, train, total)
    assert chars == total and list(everything) == [t for d in documents()
                                                   if by_text[d.text] % 2 == 0 for t in [d.text]]


def test_a_sampled_tokenizer_is_recorded(corpus_dir, tmp_path):
    prepare(corpus_dir, out_dir=tmp_path / "a", tokenizer_sample_chars=5000, **FAST)
    record = json.loads((tmp_path / "a" / "tokenizer" / "depthattn_training.json").read_text())
    assert record["sample_chars"] == 5000
    prepare(corpus_dir, out_dir=tmp_path / "b", **FAST)  # the corpus is far below the default
    record = json.loads((tmp_path / "b" / "tokenizer" / "depthattn_training.json").read_text())
    assert "sample_chars" not in record


_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


@given(st.text(alphabet="ab \t\n\r", max_size=40))
def test_text_files_stream_into_the_documents_of_a_whole_read(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("t") / "book.txt"
    path.write_bytes(text.encode())
    parts = [p for p in _BLANK_LINES.split(text.replace("\r\n", "\n")) if p.strip()]
    assert [d.text for d in iter_text_file(path)] == parts


def test_the_frequency_sketch_never_underestimates():
    rng = np.random.default_rng(0)
    sketch = DocumentFrequency(depth=2, width_bits=8)  # tiny, so that buckets collide
    docs = [np.unique(rng.integers(0, 5000, 300).astype(np.uint64)) for _ in range(50)]
    for codes in docs:
        sketch.add_document(codes)
    codes, counts = np.unique(np.concatenate(docs), return_counts=True)
    assert (sketch.estimate(codes) >= np.minimum(counts, 255)).all()
    exact = DocumentFrequency()  # the default size: no collisions among 5000 codes
    for codes_i in docs:
        exact.add_document(codes_i)
    assert (exact.estimate(codes) == counts).all()
