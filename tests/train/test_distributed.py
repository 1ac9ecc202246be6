"""Training under torchrun on CPU (gloo), against the single-process run.

- 2 processes x micro batch b equal 1 process x micro batch 2b (same global batch, same seed):
  step losses and validation losses within LOSS_RTOL (only the order of the sums differs);
- a distributed (DCP) checkpoint written at world size 2 resumes at 2 and at 1, and the
  continuation equals the uninterrupted run; a single-process checkpoint resumes at 2;
- the exported final model equals the model exported from the last DCP checkpoint;
- a rank that raises ends the whole job, non-zero, within a timeout; a rank killed while the
  checkpoint is written leaves no checkpoint that is taken as the newest;
- FSDP2 gradients equal the plain model's for Depth-Attention, mHC and a looped model, with
  activation checkpointing, on an FSDP and an HSDP mesh (fsdp_grad_worker.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from depthattn.io import is_sharded, load_model
from depthattn.train import TrainConfig, train
from depthattn.train.checkpoint import export_sharded
from depthattn.train.metrics import read_metrics
from depthattn.train.run_dir import RunDir

STEPS, CHECKPOINT_EVERY = 6, 3
LOSS_RTOL = 1e-5  # fp32: the same sums over another split of the batch
WORKER = Path(__file__).with_name("fsdp_grad_worker.py")
FAULTS = Path(__file__).with_name("faults.py")
TIMINGS = ("tokens_per_s", "elapsed_s")


def fields(prepared_corpus, run_dir: Path, **extra) -> dict:
    return {"run_dir": str(run_dir), "data": str(prepared_corpus.parent),
            "model_overrides": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 4,
                                "num_heads": 4, "num_kv_heads": 2, "head_dim": 8},
            "method": "depth_attention", "seq_len": 32, "micro_batch_size": 4,
            "global_batch_tokens": 32 * 8 * 2, "steps": STEPS, "lr": 5e-3, "log_every": 1,
            "eval_every": 3, "eval_windows": 4, "checkpoint_every": CHECKPOINT_EVERY,
            "progress": False, "tensorboard": False, **extra}


def torchrun(nproc: int, args: list[str], timeout: float = 300,
             env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def train_args(prepared_corpus, run_dir: Path, fault: tuple[str, int] | None = None,
               **extra) -> list[str]:
    """`depthattn train` with the run's fields; with ``fault`` (FAULT, rank), run by faults.py
    with FAULT in that rank."""
    overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                 for k, v in fields(prepared_corpus, run_dir, **extra).items()]
    command = (["-m", "depthattn"] if fault is None
               else [str(FAULTS), fault[0], "--rank", str(fault[1])])
    return [*command, "train", *overrides]


def run_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def losses(run_dir: Path) -> dict[tuple[int, str], float]:
    return {(r["step"], key): r[key] for r in read_metrics(run_dir)
            for key in ("loss", "val_loss") if key in r}


def assert_same_losses(a: Path, b: Path, rtol: float = LOSS_RTOL) -> None:
    ours, theirs = losses(a), losses(b)
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert theirs[key] == pytest.approx(value, rel=rtol), key


@pytest.fixture(scope="module")
def two_process_run(prepared_corpus, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("dist") / "two"
    run_ok(torchrun(2, train_args(prepared_corpus, run_dir)))
    return run_dir


@pytest.fixture(scope="module")
def one_process_run(prepared_corpus, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("dist") / "one"
    train(TrainConfig(**fields(prepared_corpus, run_dir, micro_batch_size=8)))
    return run_dir


def test_two_processes_equal_one_with_the_same_global_batch(two_process_run, one_process_run):
    assert_same_losses(one_process_run, two_process_run)
    logged = [r for r in read_metrics(two_process_run) if "loss" in r]
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))  # rank 0 alone writes
    assert logged[-1]["tokens"] == STEPS * 32 * 8 * 2
    summary = json.loads(RunDir(two_process_run).summary_file.read_text())
    assert summary["world_size"] == 2


def test_checkpoints_are_sharded_and_verified(two_process_run):
    checkpoint = RunDir(two_process_run).latest_checkpoint()
    assert checkpoint is not None and is_sharded(checkpoint)
    shards = sorted(p.name for p in (checkpoint / "dcp").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one file per rank
    assert json.loads((checkpoint / "state.json").read_text())["world_size"] == 2


def test_export_from_dcp_equals_the_exported_live_model(two_process_run, tmp_path):
    checkpoint = RunDir(two_process_run).latest_checkpoint()  # the last step's
    exported = load_model(export_sharded(checkpoint, tmp_path / "exported"))
    live = load_model(RunDir(two_process_run).model_dir)
    assert exported.config == live.config
    for name, tensor in live.state_dict().items():
        assert torch.equal(exported.state_dict()[name], tensor), name


def _cut_after_first_checkpoint(run_dir: Path, target: Path) -> Path:
    """A copy of the run as it was after the checkpoint of step CHECKPOINT_EVERY."""
    shutil.copytree(run_dir, target)
    run = RunDir(target)
    for path in run.checkpoints():
        if path.name != f"step_{CHECKPOINT_EVERY:07d}":
            shutil.rmtree(path)
    shutil.rmtree(run.model_dir)
    run.summary_file.unlink()
    return target


@pytest.mark.parametrize("world", [1, 2])
def test_dcp_checkpoint_of_two_processes_resumes_on_one_or_two(two_process_run, tmp_path,
                                                               prepared_corpus, world):
    run_dir = _cut_after_first_checkpoint(two_process_run, tmp_path / "resumed")
    if world == 1:
        # the same tokens per step: one process takes both ranks' rows
        train(TrainConfig(**fields(prepared_corpus, run_dir, micro_batch_size=8)),
              resume=True)
    else:
        run_ok(torchrun(2, ["-m", "depthattn", "train", "--resume", f"run_dir={run_dir}"]))
    assert_same_losses(two_process_run, run_dir, rtol=LOSS_RTOL if world == 1 else 1e-12)


def test_single_process_checkpoint_resumes_under_torchrun(one_process_run, tmp_path):
    run_dir = _cut_after_first_checkpoint(one_process_run, tmp_path / "resumed")
    run_ok(torchrun(2, ["-m", "depthattn", "train", "--resume", f"run_dir={run_dir}",
                        "micro_batch_size=4"]))
    assert_same_losses(one_process_run, run_dir)
    assert is_sharded(RunDir(run_dir).latest_checkpoint())


def test_async_checkpoints_equal_synchronous_ones(two_process_run, prepared_corpus, tmp_path):
    run_dir = tmp_path / "async"
    run_ok(torchrun(2, train_args(prepared_corpus, run_dir, async_checkpoint=True)))
    assert_same_losses(two_process_run, run_dir, rtol=1e-12)
    assert [p.name for p in RunDir(run_dir).checkpoints()] == ["step_0000006", "step_0000003"]


def test_a_rank_that_fails_ends_the_job(prepared_corpus, tmp_path):
    started = time.monotonic()
    result = torchrun(2, train_args(prepared_corpus, tmp_path / "run",
                                    fault=("raise_at_step:1", 1)), timeout=240)
    assert result.returncode != 0
    assert "fault injected at step 1" in result.stderr
    assert time.monotonic() - started < 120  # the other rank did not hang


def test_killed_while_checkpointing_resumes_from_the_previous_checkpoint(two_process_run,
                                                                         prepared_corpus,
                                                                         tmp_path):
    run_dir = tmp_path / "killed"
    result = torchrun(2, train_args(prepared_corpus, run_dir,
                                    fault=(f"kill_in_checkpoint:{2 * CHECKPOINT_EVERY}", 0)))
    assert result.returncode != 0
    run = RunDir(run_dir)
    assert run.latest_checkpoint().name == f"step_{CHECKPOINT_EVERY:07d}"  # not the torn one
    run_ok(torchrun(2, ["-m", "depthattn", "train", "--resume", f"run_dir={run_dir}"]))
    assert_same_losses(two_process_run, run_dir, rtol=1e-12)


@pytest.mark.parametrize("replicate", [1, 2], ids=["fsdp", "hsdp"])
def test_fsdp_gradients_equal_the_plain_model(replicate):
    result = torchrun(2, [str(WORKER), str(replicate)])
    run_ok(result)
    assert "all equal" in result.stdout


def test_a_run_with_only_dcp_checkpoints_converts_to_hugging_face(two_process_run, tmp_path):
    from transformers import AutoModelForCausalLM

    import depthattn.hf  # noqa: F401  (registers the Auto classes)
    from depthattn.hf.export import export_run

    run_dir = _cut_after_first_checkpoint(two_process_run, tmp_path / "cut")
    out = export_run(run_dir, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out)
    plain = load_model(RunDir(run_dir).latest_checkpoint())
    ids = torch.randint(0, plain.config.vocab_size, (1, 8))
    torch.testing.assert_close(hf(ids).logits, plain(ids), rtol=0, atol=1e-6)


def test_looped_model_at_sampled_depth_under_fsdp_equals_one_process(prepared_corpus, tmp_path):
    """Depth sampled per step, truncated backprop and activation checkpointing, on 2 ranks."""
    looped = {**fields(prepared_corpus, tmp_path)["model_overrides"], "prelude_layers": 1,
              "loop_layers": 2, "loop_iterations": 3, "loop_injection": "add"}
    extra = {"model_overrides": looped, "loop_sampling": "poisson_lognormal",
             "loop_max_iterations": 5, "backprop_iterations": 2,
             "activation_checkpointing": True}
    one, two = tmp_path / "one", tmp_path / "two"
    train(TrainConfig(**fields(prepared_corpus, one, micro_batch_size=8, **extra)))
    run_ok(torchrun(2, train_args(prepared_corpus, two, **extra)))
    assert_same_losses(one, two)
