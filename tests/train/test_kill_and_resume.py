"""A real `depthattn train` process killed at any moment resumes with `--resume` and logs
exactly the records of an uninterrupted run: SIGKILL inside a step, SIGKILL half-way through a
checkpoint write (installed by faults.py, which runs the command), SIGTERM from outside, SIGINT.

The uninterrupted reference runs in this process and the interrupted runs in subprocesses with
one intra-op thread each (as the suite: tests/conftest.py), so equal records mean bit-identical
losses, gradient norms, learning rates and validation losses, not merely close ones.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from depthattn.cli import main
from depthattn.train import TrainConfig, train
from depthattn.train.checkpoint import checkpoint_name
from depthattn.train.metrics import read_metrics
from depthattn.train.run_dir import RunDir
from depthattn.train.signals import TrainingStopped
from depthattn.utils.file_manifest import verify_folder

STEPS, CHECKPOINT_EVERY = 60, 10
FAULTS = Path(__file__).with_name("faults.py")
TIMINGS = ("tokens_per_s", "elapsed_s")  # the only fields allowed to differ


def fields(prepared_corpus, run_dir: Path) -> dict:
    return dict(run_dir=str(run_dir), data=str(prepared_corpus.parent),
                model_overrides=dict(hidden_size=32, intermediate_size=64, num_layers=4,
                                     num_heads=4, num_kv_heads=2, head_dim=8),
                method="depth_attention", seq_len=32, micro_batch_size=4, steps=STEPS, lr=5e-3,
                log_every=1, eval_every=20, eval_windows=4, checkpoint_every=CHECKPOINT_EVERY,
                progress=False, tensorboard=False)


def records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def reference(prepared_corpus, tmp_path_factory) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(TrainConfig(**fields(prepared_corpus, run_dir)))
    logged = records(run_dir)
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, STEPS + 1))
    return logged


def train_command(prepared_corpus, run_dir: Path, fault: str | None = None) -> list[str]:
    """`depthattn train` with the run's fields; with ``fault``, run by faults.py with it."""
    overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                 for k, v in fields(prepared_corpus, run_dir).items()]
    command = [str(FAULTS), fault] if fault is not None else ["-m", "depthattn"]
    return [sys.executable, *command, "train", *overrides]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # as the reference: one intra-op thread


def resume(run_dir: Path) -> None:
    """`depthattn train --resume run_dir=RUN`: the saved configuration does the rest."""
    assert main(["train", "--resume", f"run_dir={run_dir}"]) == 0


def test_sigkill_inside_a_random_step_resumes_bit_identically(prepared_corpus, tmp_path,
                                                              reference):
    step = random.randrange(1, STEPS - 1)
    run_dir = tmp_path / "run"
    killed = subprocess.run(train_command(prepared_corpus, run_dir, f"kill_at_step:{step}"),
                            capture_output=True, text=True, env=subprocess_env(), timeout=300,
                            check=False)
    assert killed.returncode == -signal.SIGKILL, (step, killed.stderr[-2000:])
    assert not RunDir(run_dir).is_finished()
    assert RunDir(run_dir).lock_file.exists()  # left by the killed process: stale, taken over
    resume(run_dir)
    assert records(run_dir) == reference, f"killed inside step {step}"
    assert not RunDir(run_dir).lock_file.exists()


def test_sigkill_during_a_checkpoint_write_resumes_from_the_one_before(prepared_corpus, tmp_path,
                                                                       reference):
    step = random.randrange(2, STEPS // CHECKPOINT_EVERY) * CHECKPOINT_EVERY
    run_dir = tmp_path / "run"
    killed = subprocess.run(train_command(prepared_corpus, run_dir, f"kill_in_checkpoint:{step}"),
                            capture_output=True, text=True, env=subprocess_env(), timeout=300,
                            check=False)
    assert killed.returncode == -signal.SIGKILL, (step, killed.stderr[-2000:])
    checkpoints = RunDir(run_dir).checkpoints_dir
    # it died with the new checkpoint half-written in its staging folder, never renamed
    assert [p.name for p in checkpoints.glob(f".{checkpoint_name(step)}.tmp-*")], step
    assert not (checkpoints / checkpoint_name(step)).exists()
    assert RunDir(run_dir).latest_checkpoint().name == checkpoint_name(step - CHECKPOINT_EVERY)
    resume(run_dir)
    assert records(run_dir) == reference, f"killed while writing checkpoint {step}"
    assert not list(checkpoints.glob(".step_*")), "the killed writer's leftovers are removed"


def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(prepared_corpus, tmp_path,
                                                            reference):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(train_command(prepared_corpus, run_dir), stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True, env=subprocess_env())
    metrics = RunDir(run_dir).metrics_file
    deadline = time.monotonic() + 240
    # signal it once it is training (before that, SIGTERM would end it as any process)
    while not (metrics.exists() and metrics.read_text().count('"loss"') >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM after step" in stderr
    assert f"Resume with: depthattn train --resume run_dir={run_dir}" in stderr
    assert "Traceback" not in stderr
    stopped_at = int(stderr.split("stopped by SIGTERM after step ")[1].split()[0])
    assert stopped_at < STEPS
    assert not RunDir(run_dir).lock_file.exists()  # released by the stopped run
    checkpoint = RunDir(run_dir).latest_checkpoint()
    assert checkpoint.name == checkpoint_name(stopped_at)  # the step it stopped at, not older
    verify_folder(checkpoint)
    resume(run_dir)
    assert records(run_dir) == reference, f"stopped by SIGTERM after step {stopped_at}"


def test_sigint_in_process_stops_after_the_step_with_a_checkpoint(prepared_corpus, tmp_path,
                                                                  reference, monkeypatch):
    from depthattn.data.loader import TrainBatches

    original = TrainBatches.batch

    def interrupt_at_step_7(self, step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would
        return original(self, step)

    def before_the_run(signum, frame):  # whatever handled SIGINT before (here: not Python's)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainBatches, "batch", interrupt_at_step_7)
    run_dir = tmp_path / "run"
    previous = signal.signal(signal.SIGINT, before_the_run)
    try:
        with pytest.raises(TrainingStopped) as stopped:
            train(TrainConfig(**fields(prepared_corpus, run_dir)))
        assert signal.getsignal(signal.SIGINT) is before_the_run  # the handler is restored
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (stopped.value.step, stopped.value.exit_code) == (8, 128 + signal.SIGINT)
    assert stopped.value.checkpoint == RunDir(run_dir).latest_checkpoint()
    monkeypatch.setattr(TrainBatches, "batch", original)
    resume(run_dir)
    assert records(run_dir) == reference
