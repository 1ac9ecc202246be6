"""Qwen3 attention with the cross-layer value hook: q/k/v proj → q/k norm → RoPE →
[method mixes v] → cache → causal SDPA → o_proj.

Notation: B batch, T new tokens, H query heads, H_kv kv heads, d head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from depthattn.methods.base import AttentionInput, CrossLayerMethod, ForwardContext
from depthattn.model.config import ModelConfig
from depthattn.model.norm import RMSNorm
from depthattn.model.rope import apply_rope


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = d = config.head_dim
        self.k_norm_after_rope = config.k_norm_position == "after_rope"
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, config.hidden_size, bias=False)
        # one gain of size d per layer, shared by all heads (unlike olmo, only on the head dim)
        self.q_norm = RMSNorm(d, config.rms_norm_eps)
        self.k_norm = RMSNorm(d, config.rms_norm_eps)

    def forward(self, x: torch.Tensor | AttentionInput, method: CrossLayerMethod,
                ctx: ForwardContext, application: int | None = None) -> torch.Tensor:
        """x: (B, T, D), the normed input of q_proj, k_proj and v_proj; or an
        ``AttentionInput`` whose keys and values read streams of their own (MUDDFormer).
        application: the index e of this application (looped models), default the layer's."""
        e = self.layer_idx if application is None else application
        if isinstance(x, AttentionInput):
            x, x_k, x_v = x.query, x.key, x.value
        else:
            x_k = x_v = x
        B, T, _ = x.shape
        d = self.head_dim
        q = self.q_norm(self.q_proj(x).view(B, T, self.num_heads, d)).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x_k).view(B, T, self.num_kv_heads, d)
        v = self.v_proj(x_v).view(B, T, self.num_kv_heads, d).transpose(1, 2)  # (B, H_kv, T, d)
        if not self.k_norm_after_rope:
            k = self.k_norm(k)  # Qwen3: normalise, then rotate
        k = k.transpose(1, 2)  # (B, H_kv, T, d)
        q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
        if self.k_norm_after_rope:
            k = self.k_norm(k)  # the authors' Hugging Face code: rotate, then normalise

        # The cross-layer hook: Depth-Attention returns ṽ_l (docs/method.md §3); vanilla returns v.
        v = method.mix_values(e, q, k, v, ctx)

        if ctx.cache is not None:
            k, v = ctx.cache.update(k, v, e)  # (B, H_kv, T_kv, d): the cache keeps ṽ, slot e
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.attn_mask,
                                             is_causal=ctx.is_causal, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * d))
