"""The depth mix for calls of a few tokens without autograd (decoding): the fewest operations.

When one token is decoded, every tensor here is a few hundred numbers and the time goes to
launching operations, not to arithmetic. So the n+1 keys and values are stacked (cheap at
this size, and nothing is kept for a backward) and scored and mixed with two batched matrix
products; the group mean is folded into the score scale (Σ_h q_h / (G √d)).
Same math as ``reference.py``: float32 accumulation (float64 stays float64).
"""

from __future__ import annotations

import math

import torch


def depth_mix_inference(q: torch.Tensor, source_keys: list[torch.Tensor],
                        source_values: list[torch.Tensor], key: torch.Tensor,
                        value: torch.Tensor) -> torch.Tensor:
    """ṽ_l (B, H_kv, T, d); shapes as in ``depth_mix_reference``."""
    B, H, T, d = q.shape
    H_kv = key.shape[1]
    group = H // H_kv
    compute = torch.promote_types(q.dtype, torch.float32)
    q_sum = q.unflatten(1, (H_kv, group)).sum(2, dtype=compute)  # (B, H_kv, T, d)
    keys = torch.stack([*source_keys, key], dim=-1).to(compute)  # (B, H_kv, T, d, n+1)
    scores = torch.matmul(q_sum.unsqueeze(-2), keys)  # (B, H_kv, T, 1, n+1)
    alpha = torch.softmax(scores * (1.0 / (group * math.sqrt(d))), dim=-1)
    values = torch.stack([*source_values, value], dim=-2).to(compute)  # (B, H_kv, T, n+1, d)
    return torch.matmul(alpha, values).squeeze(-2).to(value.dtype)
