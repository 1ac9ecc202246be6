"""Training: config, optimizer and schedule, run directory, atomic resumable checkpoints, the
Trainer."""

from __future__ import annotations

from typing import Any

from depthattn.train.config import TrainConfig, load_train_config

__all__ = ["RunResult", "TrainConfig", "load_train_config", "train"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the run-directory layout (train.run_dir), which the loader reads, loads
    # without the trainer, which saves through the loader's module.
    if name in ("RunResult", "train"):
        from depthattn.train import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module 'depthattn.train' has no attribute {name!r}")
