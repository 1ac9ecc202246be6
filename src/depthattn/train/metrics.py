"""Metrics to ``metrics.jsonl`` (one JSON object per line) and, when installed, TensorBoard."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from depthattn.train.run_dir import RunDir
from depthattn.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)


class MetricsLog:
    def __init__(self, run: RunDir, resume_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.path = run.metrics_file
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides the events the interrupted run logged after
                # the resumed step, as _truncate_after drops them from metrics.jsonl
                self._tb = SummaryWriter(str(run.tensorboard_dir),
                                         purge_step=None if resume_step is None
                                         else resume_step + 1)
            except ImportError:
                log.debug("tensorboard is not installed; metrics go to %s only", self.path)

    def _truncate_after(self, step: int) -> None:
        """Drop records an interrupted run wrote after the checkpoint we resume from, so the
        file reads as one uninterrupted run (rewritten atomically). A line a killed process
        left half-written is dropped too."""
        kept = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d is not a complete record (left by an interrupted run); "
                            "dropped", self.path, number)
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        # one write call per record: a kill leaves at most the last line incomplete
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def sync(self) -> None:
        """Force the records written so far onto the disk (before a checkpoint vouches for
        them)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class NullMetrics:
    """What the ranks other than 0 log: nothing (rank 0 writes the run's metrics)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = RunDir(run_dir).metrics_file
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
