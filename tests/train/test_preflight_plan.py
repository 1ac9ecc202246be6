"""``train --dry-run``: the plan (world size, mesh, accumulation, memory per device) and the bad
inputs of the distributed fields, without training."""

from __future__ import annotations

import re

import pytest

from depthattn.cli import main
from depthattn.train import TrainConfig
from depthattn.train.preflight import plan_training


def test_dry_run_prints_the_plan_without_training(capsys, tmp_path):
    code = main(["train", "--config", "paper_360m", "--dry-run", "--world-size", "8",
                 "--device-type", "cuda", f"run_dir={tmp_path / 'never'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| world size | 8 |" in out and "FSDP" in out and "| gradient accumulation |" in out
    assert "activations" in out and "**total**" in out
    assert not (tmp_path / "never").exists()


def test_plan_shards_state_over_the_ranks():
    config = TrainConfig(model="360m", global_batch_tokens=8 * 4 * 256, micro_batch_size=4,
                         seq_len=256)
    one, eight = plan_training(config, 1, "cuda"), plan_training(config, 8, "cuda")
    assert one.accumulation == 8 and eight.accumulation == 1
    assert one.tokens_per_step == eight.tokens_per_step
    assert eight.memory.optimizer == one.memory.optimizer // 8
    hsdp = plan_training(TrainConfig(model="360m", dp_replicate=2), 8, "cuda")
    assert hsdp.dp_shard == 4 and "HSDP" in hsdp.mesh
    assert one.memory.activations_checkpointed < one.memory.activations


@pytest.mark.parametrize("args, message", [
    (["--world-size", "2"], "only shape a --dry-run"),
    (["--dry-run", "--world-size", "3", "dp_replicate=2"], "dp_replicate .2. must divide"),
    (["--dry-run", "--world-size", "3", "global_batch_tokens=4096", "seq_len=256",
      "micro_batch_size=4"], "multiple of world size x micro_batch_size"),
    (["dp_replicate=0"], "dp_replicate"),
])
def test_bad_distributed_inputs(capsys, args, message, tmp_path):
    code = main(["train", *args, f"run_dir={tmp_path / 'run'}"])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
