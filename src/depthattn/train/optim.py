"""AdamW with weight decay on matrices only, and linear warmup + cosine decay to a floor."""

from __future__ import annotations

import math

import torch
from torch import nn

from depthattn.methods.base import CrossLayerMethod
from depthattn.train.config import TrainConfig


def decays(model: nn.Module) -> dict[str, bool]:
    """Parameter name → whether weight decay applies. The backbone: every matrix (projections,
    embeddings, lm_head), never a norm gain. A cross-layer method decides for its own
    parameters (``CrossLayerMethod.decays``: matrices, unless it declares otherwise)."""
    owners = {prefix: module for prefix, module in model.named_modules()
              if isinstance(module, CrossLayerMethod)}
    result = {}
    for name, param in model.named_parameters():
        owner = next(((prefix, m) for prefix, m in owners.items()
                      if name.startswith(prefix + ".")), None)
        if owner is None:
            result[name] = param.dim() >= 2
        else:
            prefix, method = owner
            result[name] = method.decays(name[len(prefix) + 1:], param)
    return result


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: the parameters ``decays`` marks, with ``weight_decay``, and the rest."""
    decay, no_decay = [], []
    rule = decays(model)
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if rule[name] else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    fused = next(model.parameters()).is_cuda  # the fused kernel exists only on CUDA
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                             betas=(config.beta1, config.beta2), eps=config.eps, fused=fused)


def lr_factor(step: int, total_steps: int, warmup_ratio: float, min_ratio: float) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based): linear warmup over
    ``warmup_ratio`` of the steps, then cosine from 1 down to ``min_ratio`` at the last step."""
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total_steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer,
                    config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.steps, config.warmup_ratio,
                                          config.min_lr_ratio))
