"""One writer per run directory: a second `train` into a run that a live process trains is
refused, naming that process; a lock left by a process that no longer runs on this host is taken
over; a lock from another host is refused with the file to remove; the lock goes when the run
ends, normally, by a signal or by an error before training."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from depthattn.train import train
from depthattn.train.lock import Holder, RunLock, is_alive
from depthattn.train.run_dir import RunDir
from tests.train.conftest import as_overrides


def write_lock(run: RunDir, pid: int, host: str | None = None) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    run.lock_file.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                         "since": "2025-01-01T00:00:00+00:00"}))


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not is_alive(child.pid)
    return child.pid


def test_a_second_train_into_a_live_run_is_refused_naming_the_first(tiny_train_config):
    config = tiny_train_config(steps=100_000, eval_every=0, checkpoint_every=0)
    run = RunDir(config.run_dir)
    first = subprocess.Popen([sys.executable, "-m", "depthattn", "train", *as_overrides(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not (run.metrics_file.exists() and '"loss"' in run.metrics_file.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        metrics = run.metrics_file.read_text()
        named = rf"being trained by pid {first.pid} on host {socket.gethostname()}"
        for resume in (False, True):
            with pytest.raises(ValueError, match=named):
                train(config, resume=resume)
        assert first.poll() is None  # the first trains on, its files untouched
        assert run.metrics_file.read_text().startswith(metrics)
        assert json.loads(run.lock_file.read_text())["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, stderr
    assert not run.lock_file.exists()  # released when a signal stops the run


def test_a_lock_left_by_a_dead_process_is_taken_over(tiny_train_config, caplog):
    config = tiny_train_config(steps=2, eval_every=0, checkpoint_every=0)
    run = RunDir(config.run_dir)
    pid = dead_pid()
    write_lock(run, pid)
    with caplog.at_level(logging.WARNING, logger="depthattn.train.lock"):
        train(config)
    assert f"taking over the lock of pid {pid} on host {socket.gethostname()}" in caplog.text
    assert run.is_finished()
    assert not run.lock_file.exists()  # released at the end


def test_a_lock_from_another_host_is_refused_with_the_file_to_remove(tiny_train_config):
    config = tiny_train_config(steps=2, eval_every=0, checkpoint_every=0)
    run = RunDir(config.run_dir)
    write_lock(run, os.getpid(), host="elsewhere")
    with pytest.raises(ValueError, match=rf"locked by pid {os.getpid()} on host elsewhere .*"
                                         rf"another host.*remove {run.lock_file}"):
        train(config)
    assert run.lock_file.exists()  # not ours to remove
    run.lock_file.unlink()
    train(config)  # as the message says


def test_an_error_before_training_releases_the_lock_and_the_new_folder(tiny_train_config,
                                                                        tmp_path):
    config = tiny_train_config(run_dir=str(tmp_path / "new" / "run"),
                               model_overrides={"vocab_size": 100})
    with pytest.raises(ValueError, match="vocab"):
        train(config)
    assert not (tmp_path / "new").exists()


def test_the_lock_names_this_process_while_held_and_is_removed_after(tmp_path):
    run = RunDir(tmp_path / "run")
    lock = RunLock(run)
    lock.acquire()
    holder = lock.holder()
    assert (holder.pid, holder.host) == (os.getpid(), socket.gethostname())
    with pytest.raises(ValueError, match=re.escape(f"being trained by {holder}")):
        RunLock(run).acquire()  # this process holds it already
    lock.release()
    assert not run.lock_file.exists() and not run.path.exists()  # nothing else was written


def test_our_own_pid_in_a_lock_we_do_not_hold_is_stale(tmp_path):
    """A restarted container numbers its processes alike: the pid in a stale lock may be ours."""
    run = RunDir(tmp_path / "run")
    write_lock(run, os.getpid())
    lock = RunLock(run)
    lock.acquire()
    assert lock.holder() != Holder(os.getpid(), socket.gethostname(),
                                   "2025-01-01T00:00:00+00:00")
    lock.release()


def test_a_lock_file_that_names_no_process_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.lock_file.write_text("")
    with pytest.raises(ValueError, match=r"does not name the process .* remove it"):
        RunLock(run).acquire()


def test_a_file_in_place_of_the_run_dir_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        RunLock(RunDir(tmp_path / "run")).acquire()
