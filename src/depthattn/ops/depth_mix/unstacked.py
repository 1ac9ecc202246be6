"""The depth mix without stacking: sources are read where they are, one at a time. Training and
prefill take it (docs/depth_mix.md).

The reference stacks the n+1 keys and values into new (B, H_kv, T, n+1, d) tensors, which
autograd then keeps for backward: 2·(n+1) extra kv-sized activations per mixing layer. Here
each score is a product-and-sum against the source tensor itself and each weighted value a
product with it, so for float32 activations backward keeps only the (B, H_kv, T, n+1) weights
and the group-mean query beyond tensors that are alive anyway (the stash holds the sources).

Same math as ``reference.py``: scores accumulate in float32 (float64 stays float64), softmax in
that dtype, output cast to the value dtype.
"""

from __future__ import annotations

import math

import torch


def depth_mix_unstacked(q: torch.Tensor, source_keys: list[torch.Tensor],
                        source_values: list[torch.Tensor], key: torch.Tensor,
                        value: torch.Tensor) -> torch.Tensor:
    """ṽ_l (B, H_kv, T, d); shapes as in ``depth_mix_reference``."""
    compute = torch.promote_types(q.dtype, torch.float32)
    # q̄: the mean of the G consecutive query heads of each group
    q_bar = q.to(compute).unflatten(1, (key.shape[1], -1)).mean(dim=2)  # (B, H_kv, T, d)
    keys, values = [*source_keys, key], [*source_values, value]
    scale = 1.0 / math.sqrt(q.shape[-1])
    # §3 step 2: a_j = q̄ · k_j / √d, in q̄'s dtype (a no-op cast for float32 keys; bf16 keys get a
    # float32 copy, as bf16 products would shift large scores by more than the softmax forgives)
    scores = [(q_bar * k.to(q_bar.dtype)).sum(-1) * scale for k in keys]
    alpha = torch.softmax(torch.stack(scores, dim=-1), dim=-1)  # (B, H_kv, T, n+1)
    # ṽ_l = Σ_j α_j ṽ_j + α_l v_l
    mixed = alpha[..., 0, None] * values[0]
    for j in range(1, len(values)):
        mixed = mixed + alpha[..., j, None] * values[j]
    return mixed.to(value.dtype)
