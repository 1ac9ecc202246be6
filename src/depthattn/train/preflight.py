"""What a run needs before it starts, from the config alone (the model is counted on the meta
device): the checks ``train`` makes so a run that cannot finish fails in seconds, memory for the
model and its optimizer and disk for a checkpoint; and the ``--dry-run`` plan, the memory it
would need on each device (docs/distributed.md).

The check's memory figure is a lower bound (16 bytes per parameter: fp32 weights, gradients,
AdamW's two moments; plus each block's input kept for backward), so it never refuses a run
that fits.

The plan's, per device, for P parameters sharded over S ranks (S = world / dp_replicate; 1
without torchrun), n = micro_batch_size x seq_len tokens, w the compute dtype's bytes:

- weights: 4P / S + the gathered compute copies (the root group, two blocks at a time, all
  blocks of a looped block) at w bytes;
- gradients: 4P / S, plus one block's unsharded gradient before its reduce-scatter;
- AdamW: 8P / S;
- activations per application of a layer (L_eff of them): n x (4D + 3 H d + 3 H_kv d + 4 I)
  values saved by autograd plus the depth stash (2 H_kv d); with activation checkpointing, one
  block input (n x D) per application plus one application's full activations;
- the loss: one chunk of fp32 logits and its gradient (chunk x vocab x 8).

An estimate, not a measurement (``benchmarks/gpu_check.sh`` measures the peak).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.ops.chunked_cross_entropy import DEFAULT_CHUNK_SIZE
from depthattn.train.config import TrainConfig
from depthattn.train.distributed import check_layout
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


def _meta_model(model_config: ModelConfig) -> CausalLM:
    """The model on the meta device: no memory, no initialisation."""
    with torch.device("meta"):
        return CausalLM(model_config)


def count_parameters(model_config: ModelConfig) -> int:
    return _meta_model(model_config).num_parameters()


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


def check_disk(run_dir: Path, parameters: int) -> None:
    """A checkpoint (and the final model next to it) must fit on the run directory's disk."""
    need = parameters * CHECKPOINT_BYTES_PER_PARAMETER
    where = run_dir.absolute()
    while not where.exists():  # the nearest folder that exists is on the same disk
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise DepthAttnError(
            f"not enough free disk space for a checkpoint in {run_dir}: one needs about "
            f"{human_bytes(need)} ({parameters:,} parameters), {where} has "
            f"{human_bytes(free)} free; free some space or choose another run_dir")



@dataclass(frozen=True)
class MemoryPlan:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    activations_checkpointed: int
    loss: int

    def total(self, checkpointing: bool) -> int:
        return (self.weights + self.gradients + self.optimizer + self.loss
                + (self.activations_checkpointed if checkpointing else self.activations))


@dataclass(frozen=True)
class TrainingPlan:
    world_size: int
    dp_replicate: int
    dp_shard: int
    micro_batch_size: int
    accumulation: int
    seq_len: int
    tokens_per_step: int
    steps: int
    parameters: int
    compute_dtype: str
    activation_checkpointing: bool
    memory: MemoryPlan

    @property
    def mesh(self) -> str:
        if self.world_size == 1:
            return "none (one process)"
        if self.dp_replicate == 1:
            return f"(dp_shard={self.dp_shard},): FSDP"
        return f"(dp_replicate={self.dp_replicate}, dp_shard={self.dp_shard}): HSDP"


def _counts(model_config: ModelConfig) -> tuple[int, int, int]:
    """(all parameters, the largest block's, the root group's)."""
    model = _meta_model(model_config)
    total = model.num_parameters()
    block = max(sum(p.numel() for p in layer.parameters()) for layer in model.model.layers)
    in_blocks = sum(p.numel() for layer in model.model.layers for p in layer.parameters())
    embed = model.model.embed_tokens.weight.numel()
    root = total - in_blocks - (0 if model_config.tie_embeddings else embed)
    return total, block, root


def plan_training(config: TrainConfig, world_size: int, device_type: str) -> TrainingPlan:
    """The plan of ``config`` on ``world_size`` processes of ``device_type`` (cpu / cuda)."""
    check_layout(world_size, config.dp_replicate)
    model_config = config.model_config()
    accumulation = config.grad_accumulation_for(world_size)
    shard = world_size // config.dp_replicate
    dtype = ("bfloat16" if config.dtype == "bfloat16" or
             (config.dtype == "auto" and device_type == "cuda") else "float32")
    w = 2 if dtype == "bfloat16" else 4
    P, block, root = _counts(model_config)
    looped = model_config.loop_layers if model_config.looped else 0
    gathered = 0 if world_size == 1 else (root + block * max(2, looped + 1)) * w
    n = config.micro_batch_size * config.seq_len
    D, I, d = model_config.hidden_size, model_config.intermediate_size, model_config.head_dim
    H, H_kv = model_config.num_heads, model_config.num_kv_heads
    per_application = n * (4 * D + 3 * H * d + 3 * H_kv * d + 4 * I + 2 * H_kv * d) * w
    L_eff = model_config.num_applications
    memory = MemoryPlan(
        weights=4 * P // shard + gathered,
        gradients=4 * P // shard + (block * 4 if world_size > 1 else 0),
        optimizer=8 * P // shard,
        activations=L_eff * per_application,
        activations_checkpointed=L_eff * n * D * w + per_application,
        loss=min(DEFAULT_CHUNK_SIZE, n) * model_config.vocab_size * 8)
    return TrainingPlan(world_size, config.dp_replicate, shard, config.micro_batch_size,
                        accumulation, config.seq_len, config.tokens_per_step_for(world_size),
                        config.steps, P, dtype, config.activation_checkpointing, memory)


def format_plan(plan: TrainingPlan, config: TrainConfig) -> str:
    """The plan as a Markdown table, then the memory estimate per device."""
    rows = [("model", f"{config.model} / {config.method}, {plan.parameters:,} parameters"),
            ("world size", str(plan.world_size)), ("mesh", plan.mesh),
            ("micro batch per rank", f"{plan.micro_batch_size} x {plan.seq_len} tokens"),
            ("gradient accumulation", str(plan.accumulation)),
            ("tokens per step", f"{plan.tokens_per_step:,} (all ranks)"),
            ("steps / tokens", f"{plan.steps:,} / {plan.steps * plan.tokens_per_step:,}"),
            ("compute dtype", plan.compute_dtype)]
    m = plan.memory
    lines = ["| plan | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "| memory per device (estimate) | without checkpointing | with |",
              "|---|---:|---:|"]
    for name, value in (("weights (shards + gathered copies)", m.weights),
                        ("gradients", m.gradients), ("AdamW state", m.optimizer),
                        ("loss chunk", m.loss)):
        lines.append(f"| {name} | {human_bytes(value)} | {human_bytes(value)} |")
    lines.append(f"| activations | {human_bytes(m.activations)} | "
                 f"{human_bytes(m.activations_checkpointed)} |")
    lines.append(f"| **total** | **{human_bytes(m.total(False))}** | "
                 f"**{human_bytes(m.total(True))}** |")
    chosen = "on" if plan.activation_checkpointing else "off"
    lines.append(f"\nactivation_checkpointing is {chosen} in this config.")
    return "\n".join(lines)
