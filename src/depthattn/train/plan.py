"""``depthattn train ... --dry-run``: what a run would do, and the memory it would need on each
device, from the config alone (the model is counted on the meta device, nothing is allocated).

Memory per device, in bytes, for P parameters sharded over S ranks (S = world / dp_replicate;
S = 1 and no gathered copies without torchrun), n = micro_batch_size x seq_len tokens, w the
compute dtype's bytes (2 for bfloat16, 4 for float32):

- weights: 4P / S (fp32 shards) + the gathered compute copies: the root group (embeddings when
  tied, norm, head, cross-layer parameters) and two blocks at a time (the one running and the
  one prefetched), all blocks of a looped block (kept gathered through the step), at w bytes;
- gradients: 4P / S, plus one block's unsharded gradient before its reduce-scatter;
- AdamW: 8P / S (two fp32 moments);
- activations, per application of a layer (L_eff of them): what autograd saves, about
  n x (4D + 3 H d + 3 H_kv d + 4 I) values (norm outputs, q/k/v before and after RoPE and
  q/k-norm, the attention output, the MLP's gate, up, activation and product), plus the depth
  stash (2 H_kv d per application, Depth-Attention); with activation checkpointing, one block
  input (n x D) per application plus one application's full activations being recomputed;
- the loss: one chunk of logits in fp32 and its gradient (chunk x vocab x 8).

An estimate, not a measurement: allocator fragmentation, communication buffers and the
framework's own memory come on top (``benchmarks/gpu_check.sh`` measures the peak).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.ops.chunked_cross_entropy import DEFAULT_CHUNK_SIZE
from depthattn.train.config import TrainConfig
from depthattn.train.distributed import check_layout
from depthattn.train.preflight import human_bytes


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
    """(all parameters, the largest block's, the root group's) on the meta device."""
    with torch.device("meta"):
        model = CausalLM(model_config)
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


__all__ = ["MemoryPlan", "TrainingPlan", "format_plan", "plan_training"]
