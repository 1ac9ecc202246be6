"""Run under torchrun by test_distributed.py: for each model (Depth-Attention, mHC, a looped
Depth-Attention model), activation checkpointing on, the FSDP2-sharded model's loss and
gradients on a batch split over the ranks equal the plain model's on the whole batch. On a 2-D
mesh (dp_replicate = world size) the same holds for HSDP. Exits non-zero on a mismatch."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.train.distributed import setup, teardown
from depthattn.train.fsdp import average_replicated_grads, clip_grad_norm, shard_model

GEOMETRY = dict(hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
                head_dim=8, vocab_size=128)
LOOPED = dict(prelude_layers=1, loop_layers=2, loop_iterations=3, loop_injection="concat")
CASES = [("depth_attention", {}), ("mhc", {}), ("depth_attention", LOOPED)]
RTOL, ATOL = 1e-4, 1e-6  # fp32; reduction order differs between the sharded and plain sums


def build(method: str, extra: dict) -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(ModelConfig.from_preset("tiny", method=method, **GEOMETRY, **extra))
    for p in model.parameters():  # away from the identity-like init, so every gradient is alive
        p.data.add_(0.02 * torch.randn_like(p))
    return model


def main() -> int:
    replicate = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    ctx, _ = setup(torch.device("cpu"), dp_replicate=replicate)
    failures = []
    for method, extra in CASES:
        reference, sharded = build(method, extra), build(method, extra)
        sharded.model.activation_checkpointing = True
        whole = shard_model(sharded, ctx.mesh)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 128, (4, 12), generator=g)
        targets = torch.randint(0, 128, (4, 12), generator=g)
        reference.loss(ids, targets).backward()
        rows = ids.shape[0] // ctx.world_size
        mine = slice(ctx.rank * rows, (ctx.rank + 1) * rows)
        loss = sharded.loss(ids[mine], targets[mine])
        loss.backward()
        average_replicated_grads(whole)
        total, = ctx.all_reduce([float(loss.detach())])
        expected = float(reference.loss(ids, targets).detach())
        if abs(total / ctx.world_size - expected) > 1e-5 * abs(expected):
            failures.append(f"{method} {extra}: loss {total / ctx.world_size} != {expected}")
        for (name, p), (_, q) in zip(reference.named_parameters(), sharded.named_parameters()):
            grad = q.grad.full_tensor() if hasattr(q.grad, "full_tensor") else q.grad
            if not torch.allclose(grad, p.grad, rtol=RTOL, atol=ATOL):
                failures.append(f"{method} {extra}: gradient of {name} differs by "
                                f"{(grad - p.grad).abs().max():.3g}")
        norm = float(clip_grad_norm(list(sharded.parameters()), 1e9))
        ref_norm = float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e9))
        if abs(norm - ref_norm) > 1e-5 * ref_norm:
            failures.append(f"{method} {extra}: grad norm {norm} != {ref_norm}")
    if ctx.rank == 0:
        print("\n".join(failures) or f"all equal (mesh {tuple(ctx.mesh.shape)})", flush=True)
    dist.barrier()
    teardown()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
