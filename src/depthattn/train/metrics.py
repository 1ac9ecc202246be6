"""Metrics to ``metrics.jsonl`` (one JSON object per line) and, when installed, TensorBoard."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from depthattn.run_dir import RunDir
from depthattn.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)


class MetricsLog:
    def __init__(self, run: RunDir, resume_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.path = run.metrics_file
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run.tensorboard_dir))
            except ImportError:
                log.debug("tensorboard is not installed; metrics go to %s only", self.path)

    def _truncate_after(self, step: int) -> None:
        """Drop records an interrupted run wrote after the checkpoint we resume from, so the
        file reads as one uninterrupted run (rewritten atomically)."""
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = RunDir(run_dir).metrics_file
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
