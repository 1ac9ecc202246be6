"""Qwen3 attention with the cross-layer value hook: q/k/v proj → q/k norm → RoPE →
[method mixes v] → cache → attention function → o_proj; and the SDPA masks (causal, padding,
packed sequences).

The attention function has the signature of transformers' attention interface
(``ALL_ATTENTION_FUNCTIONS``): ``fn(module, query, key, value, attention_mask, *, scaling,
dropout, is_causal, **kwargs) -> (output (B, T, H, d), weights or None)``. The core's is
``sdpa_attention``; the Hugging Face layer's ``DepthAttnAttention`` overrides ``forward`` to call
the one its config names (eager, SDPA, a serving engine's paged attention). The depth mix runs
before it: whatever the function caches or reads is the mixed value.

Notation: B batch, T new tokens, H query heads, H_kv kv heads, d head dim. Under tensor
parallelism (transformers' plan, ``DepthAttnConfig.base_model_tp_plan``: q/k/v colwise, o_proj
rowwise) H and H_kv are one rank's heads, so head counts are read from the tensors, not the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from depthattn.methods.base import AttentionInput, CrossLayerMethod, ForwardContext
from depthattn.model.config import ModelConfig
from depthattn.model.norm import RMSNorm
from depthattn.model.rope import apply_rope
from depthattn.utils.errors import DepthAttnError


def sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                   value: torch.Tensor, attention_mask: torch.Tensor | None,
                   scaling: float | None = None, dropout: float = 0.0, is_causal: bool = False,
                   **kwargs: object) -> tuple[torch.Tensor, None]:
    """The core's attention function: PyTorch's scaled_dot_product_attention, the kv heads
    shared by their query groups (GQA). query (B, H, T, d), key/value (B, H_kv, T_kv, d) →
    ((B, T, H, d), None)."""
    if kwargs:
        raise DepthAttnError(f"the SDPA attention function takes no {', '.join(sorted(kwargs))}")
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                         dropout_p=dropout, is_causal=is_causal, scale=scaling,
                                         enable_gqa=True)
    return out.transpose(1, 2), None


class Attention(nn.Module):
    is_causal = True  # what transformers' attention functions read of the module

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.sliding_window = config.layer_window(layer_idx)  # None: full attention
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.num_key_value_groups = config.num_heads // config.num_kv_heads
        self.head_dim = d = config.head_dim
        self.scaling = d ** -0.5
        self.k_norm_after_rope = config.k_norm_position == "after_rope"
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, config.hidden_size, bias=False)
        # one gain of size d per layer, shared by all heads (unlike olmo, only on the head dim)
        self.q_norm = RMSNorm(d, config.rms_norm_eps)
        self.k_norm = RMSNorm(d, config.rms_norm_eps)

    def forward(self, x: torch.Tensor | AttentionInput, method: CrossLayerMethod,
                ctx: ForwardContext, application: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, D), the normed input of q_proj, k_proj and v_proj; or an
        ``AttentionInput`` whose keys and values read streams of their own (MUDDFormer).
        application: the index e of this application (looped models), default the layer's.
        Returns Qwen3Attention's pair: the output (B, T, D) and the attention function's
        weights (B, H, T, T_kv), or None where it computes none (SDPA)."""
        q, k, v = self.queries_keys_values(x, method, ctx, application)
        mask, is_causal = ctx.mask_for(self.sliding_window)
        out, weights = sdpa_attention(self, q, k, v, mask, scaling=self.scaling,
                                      is_causal=is_causal,
                                      **ctx.attention_kwargs)  # (B, T, H, d)
        return self.output(out, q), weights

    def queries_keys_values(self, x: torch.Tensor | AttentionInput, method: CrossLayerMethod,
                            ctx: ForwardContext, application: int | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, T, d) and the keys and values attention reads (B, H_kv, T_kv, d): the
        values mixed by the method, and with a cache, the cached ones before them."""
        e = self.layer_idx if application is None else application
        if isinstance(x, AttentionInput):
            x, x_k, x_v = x.query, x.key, x.value
        else:
            x_k = x_v = x
        B, T, _ = x.shape
        d = self.head_dim
        # -1 heads, as Qwen3: under tensor parallelism (colwise q/k/v) a rank's projections
        # return its own heads only, H / tp and H_kv / tp of them
        q = self.q_norm(self.q_proj(x).view(B, T, -1, d)).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x_k).view(B, T, -1, d)
        v = self.v_proj(x_v).view(B, T, -1, d).transpose(1, 2)  # (B, H_kv, T, d)
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
        return q, k, v

    def output(self, out: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """o_proj of the attention output for ``query`` (B, H, T, d): (B, T, H, d), or
        (B·T, H·d) as serving engines return it."""
        B, _, T, _ = query.shape
        return self.o_proj(out.reshape(B, T, -1))  # (B, T, H·d), H this rank's heads


# Attention masks for SDPA: causal over absolute positions, padding keys hidden.
def attention_mask_for(q_len: int, past_len: int, key_valid: torch.Tensor | None,
                       device: torch.device, window: int | None = None
                       ) -> tuple[torch.Tensor | None, bool]:
    """Mask for ``q_len`` new queries after ``past_len`` cached tokens.

    key_valid: (B, past_len + q_len) bool, False at padding, or None when nothing is padded.
    window: a sliding-window layer's span (each query sees its last ``window`` tokens).
    Returns (attn_mask, is_causal) for ``scaled_dot_product_attention``: the cheapest form that
    is exact — no mask at all when SDPA's own causal flag suffices.
    """
    if key_valid is None and window is None:
        if past_len == 0:
            return None, True  # plain causal: SDPA's fused path
        if q_len == 1:
            return None, False  # one new token sees every cached token
    kv_len = past_len + q_len
    query_pos = torch.arange(past_len, kv_len, device=device)
    mask = visible_slots(query_pos, kv_len, window)[None, None]  # (1, 1, T, T_kv)
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :]  # (B, 1, T, T_kv)
        # A padding query may see no key at all (left padding); let it see everything so SDPA
        # stays finite. Its output is never read by a real token.
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask, False


def visible_slots(query_slots: torch.Tensor, kv_len: int, window: int | None) -> torch.Tensor:
    """(T, T_kv) bool: the key slots each query slot sees, causally, and within its last
    ``window`` slots when a window is given (None: all earlier ones)."""
    key_slots = torch.arange(kv_len, device=query_slots.device)[None, :]
    visible = key_slots <= query_slots[:, None]
    if window is not None:
        visible = visible & (key_slots > query_slots[:, None] - window)
    return visible


def sequence_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: where a sequence starts in a row of packed sequences (the position does not
    follow the one before; the first token always)."""
    return torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1


def is_packed(position_ids: torch.Tensor) -> bool:
    """Whether some row holds more than one sequence."""
    return bool(sequence_starts(position_ids)[:, 1:].any())


def packed_sequence_mask(position_ids: torch.Tensor, window: int | None = None
                         ) -> torch.Tensor | None:
    """Several sequences packed in one row (padding-free batches): a new sequence starts where
    the position does not follow the one before (usually at 0). Returns the (B, 1, T, T) causal
    mask (within ``window`` when given) that keeps each sequence to itself, or None when every
    row holds one sequence."""
    if not is_packed(position_ids):
        return None
    sequence = sequence_starts(position_ids).long().cumsum(-1)  # (B, T) which sequence each token belongs to
    T = position_ids.shape[1]
    causal = visible_slots(torch.arange(T, device=position_ids.device), T, window)
    return (causal & (sequence[:, :, None] == sequence[:, None, :]))[:, None]
