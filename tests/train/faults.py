"""Runs a `depthattn` command with a fault installed, so that the tests can kill a real training
process at a chosen point, deterministically, and check that it resumes exactly. The fault is
put in place here, by wrapping package functions; the package itself has no test hook.

    python tests/train/faults.py FAULT [--rank R] train key=value ...
    torchrun --nproc-per-node 2 tests/train/faults.py FAULT [--rank R] train key=value ...

    kill_at_step:N        SIGKILL the process inside step N (0-based), after its backward pass
                          and before the optimizer update
    raise_at_step:N       raise InjectedFault at the same point (a rank that fails while the
                          others wait in a collective)
    kill_in_checkpoint:N  SIGKILL it while it writes the checkpoint of step N: its files are in
                          the staging folder, the manifest that completes it is not
    --rank R              the fault in torchrun's rank R only (default: every rank)

SIGKILL cannot be caught, so what the process leaves behind is exactly what a kill -9, the OOM
killer or a preemption would leave.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


class InjectedFault(RuntimeError):
    """The error ``raise_at_step`` raises."""


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str) -> None:
    kind, _, at = fault.partition(":")
    step = int(at)
    if kind in ("kill_at_step", "raise_at_step"):
        from depthattn.train.trainer import Trainer

        train_step = Trainer.train_step

        def fail(*_):
            if kind == "kill_at_step":
                _kill()
            raise InjectedFault(f"fault injected at step {step}")

        def faulty_train_step(self, index: int):
            if index == step:  # after backward and clipping, optimizer.step() calls it first
                self.optimizer.register_step_pre_hook(fail)
            return train_step(self, index)

        Trainer.train_step = faulty_train_step
    elif kind == "kill_in_checkpoint":
        from depthattn.train import checkpoint

        staging = f".{checkpoint.checkpoint_name(step)}.tmp-"
        write_manifest = checkpoint.write_file_manifest

        def faulty_write_manifest(folder: Path):
            if Path(folder).name.startswith(staging):
                _kill()
            return write_manifest(folder)

        checkpoint.write_file_manifest = faulty_write_manifest
    else:
        raise ValueError(f"unknown fault {fault!r}")


def main(argv: list[str]) -> int:
    fault, rest = argv[0], argv[1:]
    rank = None
    if rest[:1] == ["--rank"]:
        rank, rest = rest[1], rest[2:]
    if rank is None or rank == os.environ.get("RANK", "0"):
        install(fault)
    from depthattn.cli import main as depthattn

    return depthattn(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
