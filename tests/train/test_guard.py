"""A non-finite loss or gradient norm skips the step (no optimizer update) and is counted; after
max_bad_steps in a row the run stops, naming the step and the last good checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch

from depthattn.model.decoder import CausalLM
from depthattn.train import train
from depthattn.train.guard import NonFiniteGuard, NonFiniteTraining
from depthattn.train.metrics import read_metrics
from depthattn.train.run_dir import RunDir


def poison_calls(monkeypatch, bad_calls: set[int], value: float = math.nan) -> None:
    """Make CausalLM.loss return ``value`` on the given (0-based) calls: one call per step."""
    original = CausalLM.loss
    calls = {"n": 0}

    def loss(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        return result * value if calls["n"] - 1 in bad_calls else result

    monkeypatch.setattr(CausalLM, "loss", loss)


def test_the_reason_names_the_loss_first_then_the_gradient_norm():
    guard = NonFiniteGuard(max_bad_steps=3)
    loss, norm = torch.tensor(2.5, dtype=torch.float64), torch.tensor(0.5)
    assert guard.reason_to_skip(loss, norm) is None
    assert guard.reason_to_skip(loss * math.nan, norm * math.inf) == "non-finite loss (nan)"
    assert guard.reason_to_skip(loss, norm * math.inf) == "non-finite gradient norm (inf)"


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_one_poisoned_step_is_skipped_and_counted(tiny_train_config, monkeypatch, value):
    poison_calls(monkeypatch, {6}, value)
    config = tiny_train_config(steps=12, eval_every=0, checkpoint_every=0)
    train(config)
    records = read_metrics(config.run_dir)
    skipped = [r for r in records if "skipped" in r]
    assert [(r["step"], r["skipped_steps"]) for r in skipped] == [(7, 1)]
    assert "non-finite loss" in skipped[0]["skipped"]
    assert [r["step"] for r in records if "loss" in r] == [s for s in range(1, 13) if s != 7]
    assert [r["skipped_steps"] for r in records if "loss" in r][-1] == 1
    summary = json.loads(RunDir(config.run_dir).summary_file.read_text())
    assert summary["skipped_steps"] == 1 and math.isfinite(summary["val_loss"])
    # no optimizer update for the skipped step: AdamW counted 11 steps, not 12
    state = torch.load(RunDir(config.run_dir).latest_checkpoint() / "optimizer.pt",
                       weights_only=True)["optimizer"]["state"]
    assert {float(s["step"]) for s in state.values()} == {11.0}


def test_a_non_finite_gradient_norm_alone_skips_the_step(tiny_train_config, monkeypatch):
    original = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def clip(parameters, max_norm, *args, **kwargs):
        norm = original(parameters, max_norm, *args, **kwargs)
        calls["n"] += 1
        return norm * math.inf if calls["n"] == 3 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    config = tiny_train_config(steps=5, eval_every=0, checkpoint_every=0)
    train(config)
    skipped = [r for r in read_metrics(config.run_dir) if "skipped" in r]
    assert [r["step"] for r in skipped] == [3]
    assert "non-finite gradient norm (inf)" in skipped[0]["skipped"]


def test_max_bad_steps_in_a_row_stop_the_run_naming_the_step_and_checkpoint(tiny_train_config,
                                                                           monkeypatch):
    poison_calls(monkeypatch, set(range(12, 100)))
    config = tiny_train_config(steps=30, eval_every=0, checkpoint_every=10, max_bad_steps=3)
    with pytest.raises(NonFiniteTraining,
                       match=r"training stopped at step 15: 3 steps in a row were skipped "
                             r"\(max_bad_steps 3; the last: non-finite loss \(nan\)\); the last "
                             r"good checkpoint is .*step_0000010"):
        train(config)
    assert not RunDir(config.run_dir).is_finished()


def test_the_bad_streak_is_reset_by_a_good_step(tiny_train_config, monkeypatch):
    poison_calls(monkeypatch, {2, 3, 5, 6})  # never 3 in a row
    config = tiny_train_config(steps=8, eval_every=0, checkpoint_every=0, max_bad_steps=3)
    train(config)
    assert [r["skipped_steps"] for r in read_metrics(config.run_dir) if "skipped" in r] == \
        [1, 2, 3, 4]
