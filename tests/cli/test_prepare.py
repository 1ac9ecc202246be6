"""`depthattn prepare` (depthattn.cli.prepare): its defaults, a run from the command line, and
a bad value reported as a clear error."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from depthattn.cli.prepare import add_prepare_arguments, run_prepare
from depthattn.data import TokenStream
from depthattn.data.defaults import DEFAULT_TOKENIZER_SAMPLE_CHARS
from depthattn.data.prepare_text import bpe_options
from depthattn.data.tokenizer import save_tokenizer, train_bpe
from tests.conftest import make_text


def parse(argv):
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return parser.parse_args(argv)


def test_defaults():
    args = parse([])
    assert args.source == "default" and args.tokenizer is None
    # unset, so that a size given beside --tokenizer is refused; prepare trains 8192
    assert args.vocab_size is None and args.tokenizer_sample_chars is None
    assert bpe_options(None, None, None) == (8192, DEFAULT_TOKENIZER_SAMPLE_CHARS)
    assert args.near_duplicates is None and args.progress
    assert args.engine is None  # datatrove, the one engine (None: a stray one is noticed)


@pytest.mark.parametrize("option", [["--vocab-size", "300"],
                                    ["--tokenizer-sample-chars", "1000"]])
@pytest.mark.parametrize("source", ["corpus", "default"])
def test_bpe_options_beside_a_given_tokenizer_are_refused(corpus_dir, tmp_path, option, source):
    """Nothing is trained with --tokenizer: a size or sample for the BPE would be ignored."""
    tok = save_tokenizer(train_bpe([make_text(i, 200) for i in range(4)], 300), tmp_path / "tok")
    args = parse([str(corpus_dir) if source == "corpus" else "default", "--out-dir",
                  str(tmp_path / "out"), "--tokenizer", str(tok), *option])
    name = option[0].removeprefix("--").replace("-", "_")
    with pytest.raises(ValueError, match=rf"^{name} set the BPE that prepare trains; with a "
                                         rf"tokenizer given \(.*tok.*\) none is trained"):
        run_prepare(args)
    assert not (tmp_path / "out").exists()


def test_token_files_from_the_command_line(tmp_path, capsys):
    tok = train_bpe([make_text(i, 200) for i in range(4)], 300)
    tok_path = save_tokenizer(tok, tmp_path / "tok")
    eos = int(tok.eos_token_id)
    rng = np.random.default_rng(0)
    words = [i for i in range(290) if i != eos]
    ids = np.concatenate([np.r_[rng.choice(words, 50), eos] for _ in range(20)])
    ids.astype(np.uint16).tofile(tmp_path / "train.bin")
    out = tmp_path / "out"
    assert run_prepare(parse(["--tokens", str(tmp_path / "train.bin"), "--tokenizer",
                              str(tok_path), "--out-dir", str(out), "--no-progress",
                              "--val-fraction", "0.2"])) == 0
    assert capsys.readouterr().out.strip() == str(out / "manifest.json")
    stream = TokenStream(out / "manifest.json", "train")
    assert len(stream) + len(TokenStream(out / "manifest.json", "validation")) == len(ids)
    for argv, message in [
        (["--vocab-size", "300"], r"--vocab-size do not apply to --tokens"),
        (["--engine", "datatrove"], r"--engine do not apply to --tokens"),
        (["--tasks", "2", "--num-workers", "2"], r"--num-workers, --tasks do not apply to --tokens"),
        ([str(tmp_path)], r"give either a corpus .* or --tokens, not both"),
    ]:
        with pytest.raises(SystemExit, match=message):
            run_prepare(parse([*argv, "--tokens", str(tmp_path / "train.bin"), "--tokenizer",
                               str(tok_path), "--out-dir", str(tmp_path / "o2")]))
    with pytest.raises(SystemExit, match=r"--tokens needs --tokenizer"):
        run_prepare(parse(["--tokens", str(tmp_path / "train.bin")]))
    with pytest.raises(SystemExit, match=r"--split-by only apply with --tokens"):
        run_prepare(parse([str(tmp_path), "--split-by", "files"]))
    with pytest.raises(ValueError, match=r"the model's vocab_size is 256"):
        run_prepare(parse(["--tokens", str(tmp_path / "train.bin"), "--tokenizer",
                           str(tok_path), "--out-dir", str(tmp_path / "o3"),
                           "--model-vocab-size", "256"]))
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_prepare_from_the_command_line(corpus_dir, tmp_path, capsys):
    args = parse([str(corpus_dir), "--out-dir", str(tmp_path / "out"), "--vocab-size", "300",
                  "--num-workers", "1", "--val-fraction", "0.25", "--no-progress",
                  "--near-duplicates"])  # seed 0: 1 of the 12 documents held out
    assert run_prepare(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "manifest.json")


def test_the_removed_local_engine_is_named(corpus_dir, tmp_path):
    with pytest.raises(SystemExit, match=r"--engine local was removed; datatrove prepares every "
                                         r"text corpus, on this machine by default \(--executor "
                                         r"local, --num-workers tasks at once\)"):
        run_prepare(parse([str(corpus_dir), "--engine", "local"]))


def test_bad_value_is_a_clear_error(corpus_dir, tmp_path):
    args = parse([str(corpus_dir), "--out-dir", str(tmp_path / "out"), "--vocab-size", "300",
                  "--model-vocab-size", "256", "--no-progress"])
    with pytest.raises(ValueError, match="the model's vocab_size must be at least 300"):
        run_prepare(args)
