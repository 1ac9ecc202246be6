"""FSDP2 (``fully_shard``) for a depthattn model, in torchtitan's order: activation checkpointing
(the decoder's own, so it wraps the compiled block), then ``torch.compile`` per block, then
``fully_shard`` per block, root last (the groups: docs/distributed.md).

The root (``CausalLM``) holds the final norm, the LM head and what lives outside the blocks
(``model.cross_layer.*``, a looped model's injection adapter): the training loss reads
``lm_head.weight`` inside the chunked cross-entropy rather than calling the head, so
``CausalLM.loss`` is registered as a forward method that gathers the root. 0-dim parameters
(scalar gates) cannot be sharded: they stay whole, their gradients averaged as DDP would. A
looped block's layers stay gathered through the step (one all-gather instead of 2r).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from depthattn.model.decoder import CausalLM


def shard_model(model: CausalLM, mesh, param_dtype: torch.dtype | None = None,
                reduce_dtype: torch.dtype | None = torch.float32, cpu_offload: bool = False,
                compile_blocks: bool = False) -> list[nn.Parameter]:
    """Shard ``model`` in place over ``mesh`` (1-D: FSDP; 2-D: HSDP); returns the parameters left
    whole (see ``average_replicated_grads``). ``param_dtype``: the dtype blocks compute in
    (bfloat16 on GPU: bf16 weights, fp32 reductions); None keeps fp32."""
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    common = {"mesh": mesh,
              "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype,
                                                reduce_dtype=reduce_dtype),
              "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}
    decoder = model.model
    looped = {app.layer for app in decoder.applications if app.iteration is not None}
    # what FSDP2 cannot shard (0-dim), in the same order on every rank for the all-reduce
    whole = [p for p in model.parameters() if p.dim() == 0]
    for i, block in enumerate(decoder.layers):
        if compile_blocks:
            block.compile()
        fully_shard(block, reshard_after_forward=i not in looped, **common)
    if not model.config.tie_embeddings:
        fully_shard(decoder.embed_tokens, **common)
    fully_shard(model, ignored_params=set(whole), **common)
    register_fsdp_forward_method(model, "loss")
    return whole


def average_replicated_grads(parameters: list[nn.Parameter]) -> None:
    """Average the gradients of the whole (unsharded) parameters over all ranks, in one
    all-reduce."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if len(grads) != len(parameters):
        # every rank must take part with the same tensors, or the all-reduce mismatches
        raise RuntimeError("a replicated parameter received no gradient on this rank")
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for grad, value in zip(grads, flat):
        grad.copy_(value)


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over sharded (DTensor) and whole parameters together:
    the norm of the full gradient, the same number on every rank (a 0-dim tensor, as torch's)."""
    from torch.distributed.tensor import DTensor

    with_grad = [p for p in parameters if p.grad is not None]
    sharded = [p for p in with_grad if isinstance(p, DTensor)]
    whole = [p for p in with_grad if not isinstance(p, DTensor)]
    squares = torch.zeros((), dtype=torch.float32)
    for group in (sharded, whole):
        if group:
            norm = torch.nn.utils.get_total_norm([p.grad for p in group])
            norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
            squares = squares.to(norm.device) + norm.float() ** 2
    total = squares.sqrt()
    for group in (sharded, whole):
        if group and max_norm != float("inf"):
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total
