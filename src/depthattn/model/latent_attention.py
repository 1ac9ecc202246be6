"""Multi-head latent attention (MLA, DeepSeek-V2/V3) with the cross-layer entry hook
(docs/method.md §9): queries → latent entry e = [c ; k^R] → [method mixes entries] → cache →
keys and values expanded from the latent → attention function → o_proj.

Parameter names and shapes are transformers' ``DeepseekV3Attention``'s. The cache holds the
latent entry, d_c + d_rope numbers per token and layer, not the expanded keys and values: the
key slot of a layer is [c̃ ; k̃^R] (B, 1, T, d_c + d_rope) and its value slot is empty, or c̃ under
Depth-Attention's ``values`` rule. Two equal forms of attention:
- expanded: keys [W_UK,h c ; k^R] and values W_UV,h c for every cached token, as transformers'
  DeepseekV3Attention computes them; training, prefill, and the Hugging Face layer's attention
  functions, which take per-head keys and values;
- absorbed: W_UK,h folded into the query and W_UV,h applied after the weighted sum, so that
  attention reads the latent entries as one shared kv head and nothing is expanded; the core's
  decoding steps (``use_absorbed``).

Notation: B batch, T new tokens, T_kv keys, H heads, d_c latent rank, d_nope / d_rope the
no-RoPE / RoPE dims of a query or key head, d_v a value head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from depthattn.methods.base import AttentionInput, CrossLayerMethod, ForwardContext
from depthattn.model.attention import sdpa_attention
from depthattn.model.config import ModelConfig
from depthattn.model.norm import RMSNorm
from depthattn.model.rope import apply_rope
from depthattn.utils.errors import DepthAttnError

# The eps of the two latent norms (q_a_layernorm, kv_a_layernorm): DeepseekV3 builds them with
# RMSNorm's default, 1e-6, whatever rms_norm_eps says (transformers' DeepseekV3Attention, as
# DeepSeek's own inference code); only the block and final norms read rms_norm_eps.
LATENT_NORM_EPS = 1e-6


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """(..., d) stored as pairs (x0, y0, x1, y1, ...) → halves (x0, x1, ..., y0, y1, ...), so that
    rotate-half RoPE rotates the stored pairs (transformers'
    ``apply_rotary_pos_emb_interleave``)."""
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def shared_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          mask: torch.Tensor | None, is_causal: bool, scaling: float
                          ) -> torch.Tensor:
    """SDPA of H query heads (B, H, T, d) over one shared kv head (B, 1, T_kv, ·), with the heads
    folded into the query axis: GQA broadcasting would copy the keys and values H times.
    mask: (B or 1, 1, T, T_kv) or None with ``is_causal``. Returns (B, T, H, d_v)."""
    B, H, T, d = query.shape
    if is_causal:  # the causal mask of T queries over T keys, before the heads are folded
        mask = torch.ones(T, key.shape[2], dtype=torch.bool, device=query.device).tril()[None, None]
    if mask is not None:
        mask = mask.repeat(1, 1, H, 1)  # row h·T + t is head h's query t
    out = F.scaled_dot_product_attention(query.reshape(B, 1, H * T, d), key, value,
                                         attn_mask=mask, scale=scaling)
    return out.view(B, H, T, -1).transpose(1, 2)


class LatentAttention(nn.Module):
    is_causal = True  # what transformers' attention functions read of the module
    num_key_value_groups = 1  # the expanded keys have one head per query head

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.sliding_window = config.layer_window(layer_idx)  # None: full attention
        D, H = config.hidden_size, config.num_heads
        self.num_heads = self.num_kv_heads = H
        self.rank, self.nope = config.kv_lora_rank, config.qk_nope_head_dim
        self.rope, self.v_dim = config.qk_rope_head_dim, config.v_head_dim
        self.head_dim = self.nope + self.rope
        self.scaling = self.head_dim ** -0.5  # σ
        self.interleave = config.rope_interleave
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(D, H * self.head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(D, config.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(config.q_lora_rank, H * self.head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.rank, LATENT_NORM_EPS)
        # rows per head: W_UK,h (d_nope rows), then W_UV,h (d_v rows)
        self.kv_b_proj = nn.Linear(self.rank, H * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(H * self.v_dim, D, bias=False)
        # None: the rule of use_absorbed; True / False: always / never attend in absorbed form
        self.absorbed: bool | None = None
        # New tokens per row up to which the absorbed form costs fewer multiply-adds (fixed by
        # the geometry, so computed once rather than in every forward)
        gain = 2 * self.rank - self.nope - self.v_dim
        self.absorbed_up_to = (self.nope + self.v_dim) * self.rank // gain if gain > 0 \
            else 1 << 62  # attending over the latent is never dearer than expanding it

    def forward(self, x: torch.Tensor | AttentionInput, method: CrossLayerMethod,
                ctx: ForwardContext, application: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, D), the normed block input. Returns the output (B, T, D) and the attention
        function's weights, or None (SDPA). Few new tokens without gradient (decoding) take the
        absorbed form (``use_absorbed``), which attends over the latent entries themselves."""
        mask, is_causal = ctx.mask_for(self.sliding_window)
        if self.use_absorbed(x) and not ctx.attention_kwargs:  # the core SDPA takes none
            q_nope, q_rope, key_entry, value_latent = self.latent_entries(x, method, ctx,
                                                                          application)
            w_uk, w_uv = self.up_projections()
            # q_h · [W_UK,h c ; k^R] = [W_UK,hᵀ q^N_h ; q^R_h] · [c ; k^R]: one shared kv head
            query = torch.cat((torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk), q_rope), dim=-1)
            if value_latent is None:
                value_latent = key_entry[..., :self.rank]
            out = shared_head_attention(query, key_entry, value_latent, mask, is_causal,
                                        self.scaling)  # (B, T, H, d_c)
            out = torch.einsum("bthc,hvc->bthv", out, w_uv)  # W_UV,h applied after the sum
            return self.output(out, query), None
        q, k, v = self.queries_keys_values(x, method, ctx, application)
        out, weights = sdpa_attention(self, q, k, v, mask, scaling=self.scaling,
                                      is_causal=is_causal, **ctx.attention_kwargs)
        return self.output(out, q), weights

    def use_absorbed(self, x: torch.Tensor) -> bool:
        """Whether this call attends in the absorbed form: ``absorbed`` when set, else without
        gradient (grad mode off) for up to ``absorbed_up_to`` new tokens per row. Expanding costs
        T_kv·H·(d_nope + d_v)·d_c multiply-adds per call (the cache's keys and values), and
        each new token then attends with T_kv·H·(d_nope + d_rope + d_v); in the absorbed form
        each new token attends with T_kv·H·(2·d_c + d_rope) and nothing is expanded, so it is
        cheaper for fewer new tokens than (d_nope + d_v)·d_c / (2·d_c − d_nope − d_v)
        (benchmarks/mla_decode.py measures both)."""
        if self.absorbed is not None:
            return self.absorbed
        return not torch.is_grad_enabled() and x.shape[1] <= self.absorbed_up_to

    def latent_entries(self, x: torch.Tensor | AttentionInput, method: CrossLayerMethod,
                       ctx: ForwardContext, application: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q^N (B, H, T, d_nope), RoPE'd q^R (B, H, T, d_rope), and what attention reads of the
        cache: the entries [c̃ ; k̃^R] (B, 1, T_kv, d_c + d_rope), the new ones as the method
        mixed them, and under the values rule the latents c̃ (B, 1, T_kv, d_c) the values read
        (None: the values read the entries' own latent)."""
        if isinstance(x, AttentionInput):
            raise DepthAttnError("multi-head latent attention reads one input: keys and values "
                                 "share the latent entry, so a method with key and value "
                                 "streams of their own (MUDDFormer) cannot run on it")
        e = self.layer_idx if application is None else application
        B, T, _ = x.shape
        q = self.q_proj(x) if hasattr(self, "q_proj") else \
            self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, d_nope + d_rope)
        if method.needs_whole_heads and q.shape[1] != self.num_heads:
            raise DepthAttnError(f"method {method.name!r} cannot run with the heads of an MLA "
                                 f"layer split (tensor parallelism): its parameters' gradient "
                                 f"needs all {self.num_heads} heads, and this process computes "
                                 f"{q.shape[1]}; use value_residual mode 'fixed'")
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)
        c, k_rope = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], dim=-1)
        c = self.kv_a_layernorm(c)  # (B, T, d_c)
        q_rope, k_rope = self.rotate(q_rope, ctx), self.rotate(k_rope[:, None], ctx)
        entry = torch.cat((c[:, None], k_rope), dim=-1)  # e_l = [c ; k^R]: (B, 1, T, d_c + d_rope)

        # The cross-layer hook: Depth-Attention mixes the entries of earlier layers into e_l,
        # scored by this layer's mean attention logit (docs/method.md §9); vanilla returns e_l.
        key_entry, value_latent = method.mix_entries(
            e, lambda: self.depth_query(q_nope, q_rope), entry, ctx)
        stored_values = key_entry[..., :0] if value_latent is None else value_latent
        if ctx.cache is not None:  # slot e keeps the entry (and c̃ under the values rule)
            key_entry, stored_values = ctx.cache.update(key_entry, stored_values, e)
        return q_nope, q_rope, key_entry, None if value_latent is None else stored_values

    def queries_keys_values(self, x: torch.Tensor | AttentionInput, method: CrossLayerMethod,
                            ctx: ForwardContext, application: int | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, T, d_nope + d_rope) and the keys (B, H, T_kv, d_nope + d_rope) and values
        (B, H, T_kv, d_v) expanded from the cached latent entries (the expanded form, as
        transformers' DeepseekV3Attention computes it)."""
        q_nope, q_rope, key_entry, values = self.latent_entries(x, method, ctx, application)
        B, H = q_nope.shape[:2]
        latent, k_rope = key_entry[:, 0, :, :self.rank], key_entry[..., self.rank:]
        if values is None:  # one latent for keys and values: one product, as DeepseekV3
            kv = self.kv_b_proj(latent).view(B, -1, H, self.nope + self.v_dim)
            k_nope, v = kv.transpose(1, 2).split([self.nope, self.v_dim], dim=-1)
        else:  # the values rule: keys from the layer's own latent, values from c̃
            w_uk, w_uv = self.up_projections()
            k_nope = torch.einsum("btc,hnc->bhtn", latent, w_uk)
            v = torch.einsum("btc,hvc->bhtv", values[:, 0], w_uv)
        k = torch.cat((k_nope, k_rope.expand(-1, H, -1, -1)), dim=-1)
        return torch.cat((q_nope, q_rope), dim=-1), k, v

    def rotate(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """RoPE at the new positions on (B, heads, T, d_rope)."""
        if self.interleave:
            x = deinterleave(x)
        return apply_rope(x, ctx.cos, ctx.sin)

    def up_projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK (H, d_nope, d_c) and W_UV (H, d_v, d_c): kv_b_proj's two parts, per head."""
        w = self.kv_b_proj.weight
        if hasattr(w, "to_local"):  # a DTensor under tensor parallelism: this rank's heads
            if torch.is_grad_enabled():
                raise DepthAttnError("an MLA layer under tensor parallelism reads kv_b_proj's "
                                     "weight directly only without gradient (the absorbed form, "
                                     "the values rule): kv_b_proj's hooks, which sum the "
                                     "latent's gradient over the ranks, would be skipped")
            w = w.to_local()
        w = w.view(-1, self.nope + self.v_dim, self.rank)
        return w[:, :self.nope], w[:, self.nope:]

    def depth_query(self, q_nope: torch.Tensor, q_rope: torch.Tensor) -> torch.Tensor:
        """[u ; r̄] (B, 1, T, d_c + d_rope): u = (1/H) Σ_h W_UK,hᵀ q^N_h and r̄ = (1/H) Σ_h q^R_h,
        so that σ · [u ; r̄] · e is the mean over heads of this layer's attention logit for an
        entry e at the same position (docs/method.md §9). Scaled by σ·√(d_c + d_rope), so that
        the depth mix's 1/√(width) leaves exactly σ."""
        if q_nope.shape[1] != self.num_heads:
            raise DepthAttnError(f"Depth-Attention on multi-head latent attention cannot run "
                                 f"with its heads split (tensor parallelism): its depth score "
                                 f"averages layer {self.layer_idx}'s logit over all "
                                 f"{self.num_heads} heads, and this process computes "
                                 f"{q_nope.shape[1]}")
        w_uk, _ = self.up_projections()
        u = torch.einsum("bhtn,hnc->btc", q_nope, w_uk.to(q_nope.dtype)) / q_nope.shape[1]
        query = torch.cat((u, q_rope.mean(dim=1)), dim=-1)[:, None]
        return query * (self.scaling * query.shape[-1] ** 0.5)

    def output(self, out: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """o_proj of the attention output (B, T, H, d_v) for ``query`` (B, H, T, ·)."""
        B, _, T, _ = query.shape
        return self.o_proj(out.reshape(B, T, -1))
