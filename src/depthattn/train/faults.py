"""Fault injection, a testing hook: lets the tests kill a real training process at a chosen
point, deterministically, to check that it resumes exactly.

    DEPTHATTN_FAULT=kill_at_step:N        SIGKILL the process inside step N (0-based), after
                                          its backward pass and before the optimizer update
    DEPTHATTN_FAULT=kill_in_checkpoint:N  SIGKILL it while it writes the checkpoint of step N,
                                          after the first file and before the folder is complete
    DEPTHATTN_FAULT=raise_at_step:N       raise an error inside step N (a rank that fails while
                                          the others wait in a collective)
    DEPTHATTN_FAULT_RANK=R                arm the fault in torchrun's rank R only (default: all)

Unset (normal use) each check is one environment lookup. SIGKILL cannot be caught, so what the
process leaves behind is exactly what a kill -9, the OOM killer or a preemption would leave.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "DEPTHATTN_FAULT"


RANK_VAR = "DEPTHATTN_FAULT_RANK"


class InjectedFault(RuntimeError):
    """The error ``raise_at_step`` raises."""


def _armed(kind: str, step: int) -> bool:
    spec = os.environ.get(ENV_VAR)
    if spec is None or spec != f"{kind}:{step}":
        return False
    rank = os.environ.get(RANK_VAR)
    return rank is None or rank == os.environ.get("RANK", "0")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def in_step(step: int) -> None:
    if _armed("kill_at_step", step):
        _kill()
    if _armed("raise_at_step", step):
        raise InjectedFault(f"fault injected at step {step} ({ENV_VAR})")


def in_checkpoint(step: int) -> None:
    if _armed("kill_in_checkpoint", step):
        _kill()
