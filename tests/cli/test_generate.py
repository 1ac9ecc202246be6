"""`depthattn generate` (depthattn.cli.generate): streams the greedy continuation a saved model
folder gives, samples, and names a missing or ill-fitting tokenizer."""

from __future__ import annotations

import argparse

import pytest

from depthattn.cli.generate import add_generate_arguments, run_generate
from depthattn.hf import DepthAttnForCausalLM


def _parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def test_generate_cli_streams_text(tmp_path, make_model, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from depthattn.data.tokenizer import wrap_tokenizer

    vocab = {f"w{i}": i for i in range(120)}
    vocab["[UNK]"] = 120
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    tokenizer = wrap_tokenizer(backend)
    model = DepthAttnForCausalLM.from_core(make_model(seed=1, method="depth_attention"))
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(str(tmp_path / "m"))
    args = _parse(add_generate_arguments, [str(tmp_path / "m"), "--prompt", "w1 w2 w3",
                                           "--max-new-tokens", "5"])
    run_generate(args)
    printed = capsys.readouterr().out
    ids = tokenizer("w1 w2 w3", return_tensors="pt")["input_ids"]
    expected = model.eval().generate(ids, max_new_tokens=5, eos_token_id=tokenizer.eos_token_id)
    assert printed.strip() == tokenizer.decode(expected[0]).strip()
    args = _parse(add_generate_arguments, [str(tmp_path / "m"), "--prompt", "w1",
                                           "--temperature", "0.8", "--top-p", "0.9",
                                           "--max-new-tokens", "4"])
    run_generate(args)  # sampling path runs
    (tmp_path / "bare").mkdir()
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        run_generate(_parse(add_generate_arguments, [str(tmp_path / "bare"), "--prompt", "w1"]))
    small = DepthAttnForCausalLM.from_core(make_model(seed=1, vocab_size=64))
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="vocab_size"):
        run_generate(_parse(add_generate_arguments, [str(tmp_path / "small"), "--prompt", "w1",
                                                     "--tokenizer", str(tmp_path / "m")]))
