"""Training: config, optimizer and schedule, atomic resumable checkpoints, the loop."""

from depthattn.train.config import TrainConfig, load_train_config
from depthattn.train.trainer import RunResult, train

__all__ = ["RunResult", "TrainConfig", "load_train_config", "train"]
