"""SIGTERM (a scheduler about to preempt) and SIGINT (Ctrl-C) during training: finish the step,
write a checkpoint, stop with a message that says how to resume. A second signal of the same
kind acts as it would without this handler.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):
    """Raised after the checkpoint of ``step`` is written; ``exit_code`` is 128 + the signal
    number, the shell's convention for "ended by that signal", so a job script can tell a
    stopped run (resumable) from a finished one (0) and a failed one."""

    def __init__(self, signum: int, step: int, total_steps: int, checkpoint: Path,
                 run_dir: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step} of {total_steps}; checkpoint written to "
            f"{checkpoint}. Resume with: depthattn train --resume run_dir={run_dir}")


class StopOnSignal:
    """While active (in the main thread: Python delivers signals there only), SIGTERM and
    SIGINT set ``requested`` instead of ending the process. Elsewhere it does nothing."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum
        signal.signal(signum, self._previous[signum])  # the next one acts as usual

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
