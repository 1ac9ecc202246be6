"""Starting or resuming a run: what run_dir must hold, which fields may change, the checkpoint a
run resumes from (the newest that verifies) and its tokens per step."""

from __future__ import annotations

import pytest

from depthattn.train import train
from depthattn.train.checkpoint import checkpoint_name
from depthattn.train.metrics import read_metrics
from depthattn.train.run_dir import RunDir
from tests.train.conftest import flip_a_byte


def test_existing_run_dir_is_refused_without_resume(tiny_train_config):
    config = tiny_train_config(steps=2, eval_every=0, checkpoint_every=0)
    train(config)
    with pytest.raises(ValueError, match="already holds a run.*resume"):
        train(config)


def test_resume_with_another_configuration_is_refused(tiny_train_config):
    train(tiny_train_config(steps=2))
    with pytest.raises(ValueError, match=r"different configuration \(lr"):
        train(tiny_train_config(steps=2, lr=1e-2), resume=True)


def test_resume_with_other_tokens_per_step_is_refused(tiny_train_config):
    config = tiny_train_config(steps=10)
    train(config)
    with pytest.raises(ValueError, match="trained at 128 tokens per step"):
        train(tiny_train_config(steps=10, micro_batch_size=8), resume=True)


def test_resume_skips_a_corrupt_checkpoint_and_still_matches(tiny_train_config, tmp_path):
    straight = train(tiny_train_config(run_dir=str(tmp_path / "straight"), steps=20,
                                       eval_every=0))
    config = tiny_train_config(run_dir=str(tmp_path / "damaged"), steps=20, eval_every=0,
                               keep_checkpoints=3)
    train(config)
    run = RunDir(config.run_dir)
    flip_a_byte(run.checkpoints_dir / checkpoint_name(20) / "optimizer.pt", offset=200)
    (run.summary_file).unlink()
    train(config, resume=True)  # from step 10, since 20 no longer verifies
    assert read_metrics(run.path)[-1]["val_loss"] == read_metrics(straight.run_dir)[-1]["val_loss"]
    losses = [r["loss"] for r in read_metrics(run.path) if "loss" in r]
    assert losses == [r["loss"] for r in read_metrics(straight.run_dir) if "loss" in r]


def test_resume_refuses_when_no_checkpoint_verifies(run_with_two_checkpoints,
                                                    tiny_train_config):
    run = run_with_two_checkpoints
    for checkpoint in run.checkpoints():
        flip_a_byte(checkpoint / "model.safetensors")
    with pytest.raises(ValueError, match=r"no checkpoint of .* verifies.*step_0000020: .*sha256"):
        train(tiny_train_config(steps=20, checkpoint_every=10, eval_every=0), resume=True)
