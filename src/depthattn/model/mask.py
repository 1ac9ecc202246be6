"""Attention masks for SDPA: causal over absolute positions, padding keys hidden."""

from __future__ import annotations

import torch


def attention_mask_for(q_len: int, past_len: int, key_valid: torch.Tensor | None,
                       device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """Mask for ``q_len`` new queries after ``past_len`` cached tokens.

    key_valid: (B, past_len + q_len) bool, False at padding, or None when nothing is padded.
    Returns (attn_mask, is_causal) for ``scaled_dot_product_attention``: the cheapest form that
    is exact — no mask at all when SDPA's own causal flag suffices.
    """
    if key_valid is None:
        if past_len == 0:
            return None, True  # plain causal: SDPA's fused path
        if q_len == 1:
            return None, False  # one new token sees every cached token
    kv_len = past_len + q_len
    query_pos = torch.arange(past_len, kv_len, device=device)
    mask = torch.arange(kv_len, device=device)[None, :] <= query_pos[:, None]  # (T, T_kv)
    mask = mask[None, None]  # (1, 1, T, T_kv)
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :]  # (B, 1, T, T_kv)
        # A padding query may see no key at all (left padding); let it see everything so SDPA
        # stays finite. Its output is never read by a real token.
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask, False
