"""`depthattn prepare` (depthattn.cli.prepare): its defaults, a run from the command line, and
a bad value reported as a clear error."""

from __future__ import annotations

import argparse

import pytest

from depthattn.cli.prepare import add_prepare_arguments, run_prepare


def parse(argv):
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return parser.parse_args(argv)


def test_defaults():
    args = parse([])
    assert args.source == "default" and args.vocab_size == 8192 and args.tokenizer is None
    assert args.near_duplicates is None and args.progress


def test_prepare_from_the_command_line(corpus_dir, tmp_path, capsys):
    args = parse([str(corpus_dir), "--out-dir", str(tmp_path / "out"), "--vocab-size", "300",
                  "--num-workers", "1", "--val-fraction", "0.25", "--no-progress",
                  "--near-duplicates"])
    assert run_prepare(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "manifest.json")


def test_bad_value_is_a_clear_error(corpus_dir, tmp_path):
    args = parse([str(corpus_dir), "--out-dir", str(tmp_path / "out"), "--vocab-size", "300",
                  "--model-vocab-size", "256", "--no-progress"])
    with pytest.raises(ValueError, match="the model's vocab_size must be at least 300"):
        run_prepare(args)
