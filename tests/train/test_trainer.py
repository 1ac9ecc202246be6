"""The training loop: loss goes down, resume is exact, outputs are complete and atomic, a
checkpoint that cannot be written ends the run saying how to resume, and what the configuration
alone rules out is refused before any work."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors import SafetensorError

from depthattn.cli import main
from depthattn.data.loader import TrainBatches
from depthattn.io import load_model
from depthattn.train import checkpoint, train
from depthattn.train.metrics import read_metrics
from depthattn.train.run_dir import RunDir
from tests.train.conftest import as_overrides


def _losses(run_dir):
    return [m["loss"] for m in read_metrics(run_dir) if "loss" in m]


def test_twenty_steps_decrease_the_loss(tiny_train_config):
    result = train(tiny_train_config())
    losses = _losses(result.run_dir)
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    val = [m for m in read_metrics(result.run_dir) if "val_loss" in m]
    assert [m["step"] for m in val] == [10, 20]
    assert val[-1]["val_tokens"] == result.val.tokens > 0  # the final eval reads the whole split
    for name in ("train_config.json", "model_config.json", "summary.json", "metrics.jsonl",
                 "model/model.safetensors", "checkpoints/latest"):
        assert (result.run_dir / name).exists(), name
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["val_loss"] == pytest.approx(result.val.loss)
    loaded = load_model(result.run_dir)
    assert loaded.config.method == "depth_attention"


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tiny_train_config, tmp_path,
                                                                    monkeypatch):
    reference = train(tiny_train_config(run_dir=str(tmp_path / "straight")))
    interrupted = tiny_train_config(run_dir=str(tmp_path / "interrupted"))
    original = TrainBatches.batch

    def crash_at_step_13(self, step):
        if step == 13:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(TrainBatches, "batch", crash_at_step_13)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted)
    assert not (tmp_path / "interrupted" / "summary.json").exists()
    monkeypatch.setattr(TrainBatches, "batch", original)
    resumed = train(interrupted, resume=True)
    assert _losses(resumed.run_dir) == _losses(reference.run_dir)  # exact, step by step
    assert resumed.val.loss == reference.val.loss


FULL_DISK = {
    "oserror": OSError(errno.ENOSPC, "No space left on device"),
    "safetensors": SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                                   'StorageFull, message: "No space left on device" })'),
}


@pytest.mark.parametrize("error", FULL_DISK.values(), ids=FULL_DISK.keys())
def test_a_checkpoint_that_cannot_be_written_ends_with_one_line_saying_how_to_resume(
        tiny_train_config, tmp_path, monkeypatch, capsys, error):
    straight = train(tiny_train_config(run_dir=str(tmp_path / "straight"), eval_every=0))
    config = tiny_train_config(eval_every=0)  # checkpoints at steps 10 and 20
    save_model, written = checkpoint.save_model, []

    def disk_full_at_the_second_checkpoint(model, folder):
        written.append(folder)
        if len(written) == 2:
            raise error
        return save_model(model, folder)

    monkeypatch.setattr(checkpoint, "save_model", disk_full_at_the_second_checkpoint)
    assert main(["train", *as_overrides(config)]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    line, = [line for line in stderr.splitlines() if "error" in line]
    good = RunDir(config.run_dir).checkpoints_dir / "step_0000010"
    assert line.startswith("depthattn train: error: writing a checkpoint into ")
    assert "No space left on device" in line
    assert f"the last good checkpoint is {good}. Resume with: depthattn train --resume " \
           f"run_dir={config.run_dir}" in line
    written.clear()
    with pytest.raises(ValueError) as failed:  # the same, for a caller of train()
        train(tiny_train_config(run_dir=str(tmp_path / "again"), eval_every=0))
    assert failed.value.__cause__ is error
    monkeypatch.setattr(checkpoint, "save_model", save_model)
    assert main(["train", "--resume", f"run_dir={config.run_dir}"]) == 0  # nothing was lost
    assert _losses(config.run_dir) == _losses(straight.run_dir)


def test_gradient_accumulation_matches_one_big_batch(tiny_train_config, tmp_path):
    big = train(tiny_train_config(run_dir=str(tmp_path / "big"), micro_batch_size=8, steps=3,
                                  eval_every=0, checkpoint_every=0))
    accumulated = train(tiny_train_config(run_dir=str(tmp_path / "acc"), micro_batch_size=4,
                                          global_batch_tokens=8 * 32, steps=3, eval_every=0,
                                          checkpoint_every=0))
    assert _losses(accumulated.run_dir) == pytest.approx(_losses(big.run_dir), abs=1e-5)


def test_activation_checkpointing_gives_the_same_losses(tiny_train_config, tmp_path):
    plain = train(tiny_train_config(run_dir=str(tmp_path / "plain"), steps=4, eval_every=0))
    recomputed = train(tiny_train_config(run_dir=str(tmp_path / "ckpt"), steps=4, eval_every=0,
                                         activation_checkpointing=True))
    assert _losses(recomputed.run_dir) == pytest.approx(_losses(plain.run_dir), abs=1e-5)


@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_activation_checkpointing_gradients_equal_plain_backward(method):
    from tests.conftest import random_ids, tiny_model

    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=5, method=method).train()
        model.model.activation_checkpointing = checkpointing
        ids = random_ids(2, 12, seed=5)
        model(ids).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fields, message", [
    (dict(seq_len=10_000), r"seq_len 10000 is larger than the model allows"),
    (dict(method="nope"), r"method \('nope'\) is unknown; allowed: .*depth_attention"),
    (dict(method_options={"strid": 2}), r"unknown option\(s\) 'strid'.*allowed: stride"),
    (dict(model="huge"), r"preset \('huge'\) is unknown"),
    (dict(model_overrides={"vocab_size": 100}), r"vocab"),
])
def test_bad_input_fails_before_any_work(tiny_train_config, tmp_path, fields, message):
    config = tiny_train_config(run_dir=str(tmp_path / "never"), **fields)
    with pytest.raises(ValueError, match=message):
        train(config)
    assert not (tmp_path / "never").exists()


def test_missing_data_is_a_clear_error(tiny_train_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        train(tiny_train_config(data=str(tmp_path / "nowhere.txt")))


def test_first_step_loss_equals_cross_entropy_of_the_full_logits(tiny_train_config):
    """The trainer's chunked loss is the formula it replaced, F.cross_entropy(logits.float())."""
    import torch.nn.functional as F

    from depthattn import CausalLM
    from depthattn.data import resolve_data
    from depthattn.data.loader import IGNORE_INDEX
    from depthattn.data.shards import TokenStream

    config = tiny_train_config(steps=1, eval_every=0, checkpoint_every=0)
    stream = TokenStream(resolve_data(config.data, config.vocab_size), "train")
    inputs, targets = TrainBatches(stream, config.seq_len, config.micro_batch_size,
                                   seed=config.seed).batch(0)
    torch.manual_seed(config.seed)  # as the trainer, right before building the model
    model = CausalLM(config.model_config(vocab_size=stream.vocab_size))
    with torch.no_grad():
        expected = F.cross_entropy(model(inputs).float().flatten(0, 1), targets.flatten(),
                                   ignore_index=IGNORE_INDEX).item()
    assert _losses(train(config).run_dir)[0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_compiled_training_gives_the_same_losses(tiny_train_config, tmp_path):
    eager = train(tiny_train_config(run_dir=str(tmp_path / "eager"), steps=3, eval_every=0))
    compiled = train(tiny_train_config(run_dir=str(tmp_path / "compiled"), steps=3, eval_every=0,
                                       compile=True))
    assert _losses(compiled.run_dir) == pytest.approx(_losses(eager.run_dir), abs=1e-4)


def test_dp_replicate_needs_torchrun(tiny_train_config):
    with pytest.raises(ValueError, match="dp_replicate .2. needs several processes"):
        train(tiny_train_config(dp_replicate=2))


def test_cpu_offload_needs_a_sharded_gpu_run(tiny_train_config):
    with pytest.raises(ValueError, match="fsdp_cpu_offload .* needs torchrun and device cuda"):
        train(tiny_train_config(fsdp_cpu_offload=True))


def test_async_checkpoint_needs_torchrun(tiny_train_config):
    with pytest.raises(ValueError, match="async_checkpoint writes the sharded checkpoints"):
        train(tiny_train_config(async_checkpoint=True))
