"""Fault injection, a testing hook: lets the tests kill a real training process at a chosen
point, deterministically, to check that it resumes exactly.

    DEPTHATTN_FAULT=kill_at_step:N        SIGKILL the process inside step N (0-based), after
                                          its backward pass and before the optimizer update
    DEPTHATTN_FAULT=kill_in_checkpoint:N  SIGKILL it while it writes the checkpoint of step N,
                                          after the first file and before the folder is complete

Unset (normal use) each check is one environment lookup. SIGKILL cannot be caught, so what the
process leaves behind is exactly what a kill -9, the OOM killer or a preemption would leave.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "DEPTHATTN_FAULT"


def _armed(kind: str, step: int) -> bool:
    spec = os.environ.get(ENV_VAR)
    return spec is not None and spec == f"{kind}:{step}"


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def in_step(step: int) -> None:
    if _armed("kill_at_step", step):
        _kill()


def in_checkpoint(step: int) -> None:
    if _armed("kill_in_checkpoint", step):
        _kill()
