"""Checks made before training starts, so a run that cannot finish fails in seconds with a
message instead of an hour in: memory for the model and its optimizer, disk for a checkpoint.

The memory figure is a lower bound — fp32 weights, gradients and AdamW's two moments (16 bytes
per parameter) plus each block's input kept for backward — so the check never refuses a run that
fits; a run that passes it may still need more (attention and MLP activations).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.train.config import TrainConfig
from depthattn.utils.devices import available_memory
from depthattn.utils.errors import DepthAttnError

GIB = 1 << 30
STATE_BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
CHECKPOINT_BYTES_PER_PARAMETER = 12  # fp32 weights (safetensors) + the two AdamW moments


def human_bytes(n: float) -> str:
    """``1.5 GiB``, ``320.0 MiB``, ``12.0 KiB``: the unit that keeps the figure readable."""
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def count_parameters(model_config: ModelConfig) -> int:
    """Parameters of the model, counted on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        model = CausalLM(model_config)
    return model.num_parameters()


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    state_bytes: int
    activation_bytes: int

    @property
    def total(self) -> int:
        return self.state_bytes + self.activation_bytes


def estimate_memory(model_config: ModelConfig, config: TrainConfig,
                    activation_bytes_per_value: int, parameters: int) -> MemoryEstimate:
    tokens = config.micro_batch_size * config.seq_len
    # one residual per layer application: L_eff of them in a looped model
    activations = (tokens * model_config.hidden_size * model_config.num_applications
                   * activation_bytes_per_value)
    return MemoryEstimate(parameters, parameters * STATE_BYTES_PER_PARAMETER, activations)


def check_memory(model_config: ModelConfig, config: TrainConfig, device: torch.device,
                 amp_dtype: torch.dtype | None, parameters: int) -> None:
    available = available_memory(device)
    if available is None:
        return
    value_bytes = 2 if amp_dtype is not None else 4
    need = estimate_memory(model_config, config, value_bytes, parameters)
    if need.total > available:
        raise DepthAttnError(
            f"model {config.model!r} ({need.parameters:,} parameters) needs at least "
            f"{human_bytes(need.total)} to train on {device} (weights, gradients and AdamW "
            f"state {human_bytes(need.state_bytes)}, activations at micro_batch_size "
            f"{config.micro_batch_size} x seq_len {config.seq_len} at least "
            f"{human_bytes(need.activation_bytes)}), but {human_bytes(available)} are "
            f"available; choose a smaller model, micro_batch_size or seq_len, or another device")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk(run_dir: Path, parameters: int) -> None:
    """A checkpoint (and the final model next to it) must fit on the run directory's disk."""
    need = parameters * CHECKPOINT_BYTES_PER_PARAMETER
    where = _existing_ancestor(run_dir)
    free = shutil.disk_usage(where).free
    if need > free:
        raise DepthAttnError(
            f"not enough free disk space for a checkpoint in {run_dir}: one needs about "
            f"{human_bytes(need)} ({parameters:,} parameters), {where} has "
            f"{human_bytes(free)} free; free some space or choose another run_dir")
