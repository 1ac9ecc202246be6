"""The run directory: its layout, its checkpoints newest first, the newest that verifies (a
corrupt or partial one named and skipped), where its model and tokenizer are."""

from __future__ import annotations

import logging

import pytest

from depthattn.train.checkpoint import checkpoint_name
from depthattn.train.run_dir import RunDir, find_tokenizer
from tests.train.conftest import flip_a_byte


def test_the_layout():
    run = RunDir("RUN")
    assert {name: str(getattr(run, name)) for name in (
        "config_file", "model_config_file", "metrics_file", "summary_file", "model_dir",
        "checkpoints_dir", "zeroshot_dir", "tensorboard_dir", "lock_file")} == {
        "config_file": "RUN/train_config.json", "model_config_file": "RUN/model_config.json",
        "metrics_file": "RUN/metrics.jsonl", "summary_file": "RUN/summary.json",
        "model_dir": "RUN/model", "checkpoints_dir": "RUN/checkpoints",
        "zeroshot_dir": "RUN/zeroshot", "tensorboard_dir": "RUN/tensorboard",
        "lock_file": "RUN/.lock"}


def test_checkpoints_newest_first_and_the_model_before_them(run_with_two_checkpoints):
    run = run_with_two_checkpoints
    assert [p.name for p in run.checkpoints()] == [checkpoint_name(20), checkpoint_name(10)]
    assert run.model_path() == run.model_dir
    (run.model_dir / "config.json").unlink()
    assert run.model_path() == run.checkpoints_dir / checkpoint_name(20)


def test_the_tokenizer_of_a_run_is_the_one_its_data_names(run_with_two_checkpoints):
    tokenizer = find_tokenizer(run_with_two_checkpoints.path)
    assert tokenizer is not None and (tokenizer / "tokenizer.json").is_file()


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing file", "no manifest"])
def test_a_corrupt_checkpoint_is_named_and_skipped(run_with_two_checkpoints, caplog, damage):
    run = run_with_two_checkpoints
    newest = run.checkpoints_dir / checkpoint_name(20)
    weights = newest / "model.safetensors"
    if damage == "flipped byte":
        flip_a_byte(weights)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "missing file":
        (newest / "optimizer.pt").unlink()
    else:
        (newest / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert run.latest_checkpoint() == run.checkpoints_dir / checkpoint_name(10)
    assert f"skipping corrupt checkpoint {checkpoint_name(20)}" in caplog.text
    assert {"flipped byte": "sha256", "truncated": "bytes", "missing file": "optimizer.pt",
            "no manifest": "manifest.json"}[damage] in caplog.text
