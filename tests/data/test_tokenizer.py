from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from depthattn.data.tokenizer import (
    EOS_TOKEN,
    MIN_VOCAB_SIZE,
    check_vocab_fits,
    load_tokenizer,
    save_tokenizer,
    tokenizer_sha256,
    tokenizer_vocab_size,
    train_bpe,
)
from tests.conftest import make_text

SAMPLE = "Hamlet:  O'er the sea —  “quoted”,\n\n\tthe end é ö 'tis\n"


@pytest.fixture(scope="module")
def tok():
    return train_bpe([make_text(i) for i in range(8)], vocab_size=400)


def test_trained_tokenizer_is_a_fast_hf_tokenizer(tok):
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.eos_token == EOS_TOKEN and tok.eos_token_id is not None
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tokenizer_vocab_size(tok) == 400


def test_encode_decode_is_exact_for_any_text(tok):
    ids = tok(SAMPLE, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == SAMPLE  # byte-level: even unseen characters round-trip


@pytest.mark.parametrize("via", ["folder", "file", "auto"])
def test_save_load_round_trip(tok, tmp_path, via):
    tokenizer_json = save_tokenizer(tok, tmp_path / "tok")
    loaded = {"folder": lambda: load_tokenizer(tmp_path / "tok"),
              "file": lambda: load_tokenizer(tokenizer_json),
              "auto": lambda: AutoTokenizer.from_pretrained(str(tmp_path / "tok"))}[via]()
    assert loaded(SAMPLE, add_special_tokens=False)["input_ids"] == \
        tok(SAMPLE, add_special_tokens=False)["input_ids"]
    assert loaded.eos_token_id == tok.eos_token_id
    assert tokenizer_sha256(loaded) == tokenizer_sha256(tok)


def test_hash_ignores_padding_settings_but_not_vocabulary(tok):
    before = tokenizer_sha256(tok)
    tok.backend_tokenizer.enable_padding(pad_id=tok.pad_token_id, pad_token="<|pad|>")
    try:
        assert tokenizer_sha256(tok) == before
    finally:
        tok.backend_tokenizer.no_padding()
    other = train_bpe([make_text(i) for i in range(8)], vocab_size=300)
    assert tokenizer_sha256(other) != before


def test_vocab_size_out_of_range():
    with pytest.raises(ValueError, match=f"vocab_size 100 .* at least {MIN_VOCAB_SIZE}"):
        train_bpe(["text"], vocab_size=100)


def test_check_vocab_fits():
    check_vocab_fits(8192, 8192)
    check_vocab_fits(8000, 8192)  # a padded model vocabulary is fine
    with pytest.raises(ValueError, match=r"8200 tokens .* vocab_size is 8192.* at least 8200"):
        check_vocab_fits(8200, 8192)


def test_missing_tokenizer_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nope")
