"""The depth mix in plain PyTorch: slow, obviously right, the yardstick for every fused version.

Notation (docs/method.md §3):
    B    | batch size
    H    | query heads;  H_kv | kv heads;  G = H / H_kv query heads per kv head
    T    | new tokens in this call
    d    | head dim
    n    | number of depth sources |S(l)|
"""

from __future__ import annotations

import math

import torch


def depth_mix_reference(
    q: torch.Tensor,
    source_keys: list[torch.Tensor],
    source_values: list[torch.Tensor],
    key: torch.Tensor,
    value: torch.Tensor,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mix the values of earlier layers into this layer's value, per token and kv head.

    Args:
        q: (B, H, T, d) this layer's queries (after q_norm and RoPE).
        source_keys: n tensors (B, H_kv, T, d): keys of the source layers at the same tokens.
        source_values: n tensors (B, H_kv, T, d): their *mixed* values ṽ_j.
        key: (B, H_kv, T, d) this layer's own key k_l.
        value: (B, H_kv, T, d) this layer's raw value v_l.
        return_weights: also return the depth weights α.

    Returns:
        ṽ_l (B, H_kv, T, d) in ``value``'s dtype, and with ``return_weights`` α (B, H_kv, T, n+1)
        in the compute dtype, sources in the order given and the layer itself last.

    Everything is computed in float32 (float64 stays float64) and cast back at the end.

    Example:
        >>> q = torch.randn(2, 8, 5, 64); k = v = torch.randn(2, 2, 5, 64)
        >>> depth_mix_reference(q, [k], [v], k, v).shape
        torch.Size([2, 2, 5, 64])
    """
    B, H, T, d = q.shape
    H_kv = key.shape[1]
    compute = torch.promote_types(q.dtype, torch.float32)
    # group-mean depth query: the G consecutive query heads that share kv head g
    q_bar = q.to(compute).unflatten(1, (H_kv, H // H_kv)).mean(dim=2)  # (B, H_kv, T, d)
    keys = torch.stack([*source_keys, key], dim=-2).to(compute)  # (B, H_kv, T, n+1, d)
    values = torch.stack([*source_values, value], dim=-2).to(compute)  # (B, H_kv, T, n+1, d)
    # eq. 3: a_j = q̄ · k_j / √d for the sources and the layer itself, softmax over depth
    scores = torch.einsum("bgtd,bgtnd->bgtn", q_bar, keys) / math.sqrt(d)
    alpha = torch.softmax(scores, dim=-1)  # (B, H_kv, T, n+1)
    # ṽ_l = Σ_j α_j ṽ_j + α_l v_l
    mixed = torch.einsum("bgtn,bgtnd->bgtd", alpha, values).to(value.dtype)
    return (mixed, alpha) if return_weights else mixed
