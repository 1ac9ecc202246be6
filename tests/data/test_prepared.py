"""Before training reads a prepared folder, its shards must match the manifest (size and
sha256) and its tokenizer must be the one the shards were built with."""

from __future__ import annotations

import json
import shutil

import pytest

from depthattn.data import prepare, train_bpe
from depthattn.data.prepared import verify_prepared


@pytest.fixture
def prepared(corpus_dir, tmp_path):
    manifest = prepare(corpus_dir, out_dir=tmp_path / "prepared", vocab_size=300,
                       num_workers=1, seed=1, progress=False)  # seed 1: a validation document
    return manifest


def first_shard(manifest, split="train"):
    entry = json.loads(manifest.read_text())["splits"][split]["shards"][0]
    return manifest.parent / entry["file"], entry


def test_a_fresh_preparation_verifies_and_lists_size_and_checksum(prepared):
    verify_prepared(prepared)
    path, entry = first_shard(prepared)
    assert entry["bytes"] == path.stat().st_size and len(entry["sha256"]) == 64


def test_an_altered_shard_of_the_same_size_is_caught_by_its_checksum(prepared):
    path, _ = first_shard(prepared)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{path.name} has sha256 .*, but .*manifest.json says"):
        verify_prepared(prepared)


def test_a_truncated_shard_is_caught_by_its_size(prepared):
    path, entry = first_shard(prepared, "validation")
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match=rf"{path.name} has {entry['bytes'] - 4} bytes, but "):
        verify_prepared(prepared)


def test_a_missing_shard_is_named(prepared):
    path, _ = first_shard(prepared)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{path.name} is listed in .* but missing"):
        verify_prepared(prepared)


def test_a_tokenizer_other_than_the_shards_one_is_refused(prepared, tmp_path):
    folder = prepared.parent / "tokenizer"
    shutil.rmtree(folder)
    other = train_bpe(["a completely different corpus " * 20], vocab_size=270)
    other.save_pretrained(str(folder))
    with pytest.raises(ValueError, match=r"the tokenizer in .*tokenizer \(sha256 .*\) is not the "
                                         r"one the shards in .* were built with"):
        verify_prepared(prepared)


def test_a_missing_tokenizer_is_named(prepared):
    shutil.rmtree(prepared.parent / "tokenizer")
    with pytest.raises(FileNotFoundError, match=r"the tokenizer .*tokenizer named in .* is missing"):
        verify_prepared(prepared)
