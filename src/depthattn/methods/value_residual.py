"""Value residual learning (ResFormer, Zhou et al., 2024, arXiv 2410.17897): every layer after
the first mixes layer 0's value into its own, right after v_proj and before the cache write.

docs/baselines.md §9, with λ_l the share of layer 0's value (0-based l ≥ 1; layer 0 is unchanged):

    ṽ_l = (1 − λ_l) · v_l + λ_l · v_0

- ``fixed``: λ_l = 0.5 — the ResFormer paper's 0.5·V_1 + 0.5·V_n (the default);
- ``learned``: one scalar λ_l per layer, initialised to 0.5 (modded-nanogpt, 2024-11-19 record);
- ``gated``: λ_l = σ(W_l · RMSNorm(x) + b_l) per token and kv head, x the attention sublayer's
  input (x-transformers' ``learned_value_residual_mix``). W_l, b_l start at 0, so λ_l = 0.5.

So no mode is vanilla at initialisation: all three start as ResFormer's fixed 0.5/0.5 mix. The
mix happens at the H_kv value heads, before GQA shares them (§12), and the cache stores ṽ_l, so it
keeps its vanilla size and past tokens never need v_0 again (§9e). Not a baseline of the
Depth-Attention paper; it is the closest static analogue of Depth-Attention (§9d).

Looped models (docs/method.md §7): "layer 0" is application 0, and every later application e mixes v_0 in;
a learned λ or a gate belongs to the distinct layer that application e runs, shared by its
iterations. A looped layer 0 (no prelude) would need a λ of its own for its later iterations:
``learned`` and ``gated`` refuse that geometry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from depthattn.methods.base import (
    CrossLayerMethod,
    KeyValue,
    MethodCost,
    MethodOptions,
    Sublayer,
)
from depthattn.methods.registry import register
from depthattn.utils.errors import DepthAttnError

if TYPE_CHECKING:
    from depthattn.methods.base import ForwardContext
    from depthattn.model.config import ModelConfig

MODES = ("fixed", "learned", "gated")


@dataclass(frozen=True)
class ValueResidualOptions(MethodOptions):
    mode: str = "fixed"  # how λ_l is formed: fixed 0.5, a learned scalar, or a per-token gate

    def resolved(self, config: ModelConfig) -> ValueResidualOptions:
        if self.mode not in MODES:
            raise DepthAttnError(f"value_residual option mode ({self.mode!r}) must be one of "
                                 f"{', '.join(MODES)}")
        if self.mode != "fixed" and config.looped and config.prelude_layers == 0:
            raise DepthAttnError(f"value_residual mode {self.mode!r} cannot run a looped model "
                                 f"without a prelude: its λ_l (l >= 1) belong to distinct "
                                 f"layers, and "
                                 f"the looped layer 0's later iterations would need one of their "
                                 f"own; "
                                 f"set prelude_layers >= 1 or mode='fixed'")
        if config.attention == "mla" and self.mode == "gated":
            raise DepthAttnError("value_residual mode 'gated' has no form on multi-head latent "
                                 "attention: its gate is per kv head, and an MLA entry is one "
                                 "latent shared by all heads; use mode 'fixed' or 'learned' (the "
                                 "latent residual, docs/method.md §9)")
        return self


@register("value_residual", options=ValueResidualOptions)
class ValueResidual(CrossLayerMethod):
    """Lives inside attention (`mix_values`); in ``gated`` mode the stream hook also reads the
    attention sublayer's input, which `mix_values` does not receive."""

    reads_context_activations = True  # layer 0's value, from the depth stash

    # Weight decay follows the default rule: λ (a vector; modded-nanogpt trains it without
    # decay) and the gate biases are not decayed, the gate matrices W_l are.

    def __init__(self, config: ModelConfig, options: ValueResidualOptions) -> None:
        super().__init__(config, options)
        self.mode = options.mode
        # learned λ on an MLA entry: k̃^R's gradient reaches it from this process's heads only
        self.needs_whole_heads = config.attention == "mla" and self.mode == "learned"
        self.eps = config.rms_norm_eps
        self.num_kv_heads = config.num_kv_heads
        later = range(1, config.num_layers)  # layer 0 has nothing to mix in
        if self.mode == "learned":
            self.lambdas = nn.Parameter(torch.empty(len(later)))  # lambdas[l − 1] is λ_l
        elif self.mode == "gated":
            # Keyed by layer: `gates.{l}.weight` (H_kv, D), `gates.{l}.bias` (H_kv,).
            self.gates = nn.ModuleDict({str(l): nn.Linear(config.hidden_size,
                                                          config.num_kv_heads)
                                        for l in later})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every mode starts at λ = 0.5. Runs after the model's generic N(0, σ²) init of all
        Linears, so the zero gate survives it."""
        if self.mode == "learned":
            nn.init.constant_(self.lambdas, 0.5)
        elif self.mode == "gated":
            for gate in self.gates.values():
                nn.init.zeros_(gate.weight)
                nn.init.zeros_(gate.bias)

    @classmethod
    def cost(cls, config: ModelConfig, options: ValueResidualOptions) -> MethodCost:
        """§9b params: 0 / L−1 / (L−1)(D·H_kv + H_kv). FLOPs: the mix, 3 per value element
        (a + λ(b − a)), in L−1 layers; the gate adds its RMSNorm (≈ 3·D) and its projection
        (2·D·H_kv), the only matmul-class term. §9c state: the residual, d. v_0 of the
        in-flight token is layer 0's own KV-cache entry (ṽ_0 = v_0), kept for later layers as
        Depth-Attention keeps its sources: no state beyond the KV cache.
        Looped: parameters per distinct layer, FLOPs per application (L_eff − 1 mixes).
        MLA (the latent residual, docs/method.md §9): the mix is on the whole entry [c ; k^R],
        3·(d_c + d_rope) per layer; e_0 is layer 0's own cache entry."""
        L, D, A = config.num_layers, config.hidden_size, config.num_applications
        kv = (config.kv_lora_rank + config.qk_rope_head_dim if config.attention == "mla"
              else config.num_kv_heads * config.head_dim)  # elements mixed per layer
        params = {"fixed": 0, "learned": L - 1,
                  "gated": (L - 1) * (D * config.num_kv_heads + config.num_kv_heads)}[options.mode]
        flops, matmul = (A - 1) * 3 * kv, 0
        if options.mode == "gated":
            matmul = (A - 1) * 2 * D * config.num_kv_heads
            flops += (A - 1) * 3 * D + matmul
        return MethodCost(added_params=params, added_flops_per_token=float(flops),
                          added_matmul_flops_per_token=float(matmul),
                          inflight_state_per_token=D)

    def read(self, stream: torch.Tensor, layer_idx: int, sublayer: Sublayer,
                       ctx: ForwardContext) -> torch.Tensor:
        if self.mode == "gated" and sublayer == "attn" and layer_idx > 0:
            # x-transformers gates on the attention input input_layernorm(x); mix_values does
            # not see it, so the gate is formed here from RMSNorm(x) without the gain — the
            # same function class, since W_l absorbs the gain (W·(g ⊙ n) = (W·diag g)·n).
            normed = F.rms_norm(stream.to(torch.promote_types(stream.dtype, torch.float32)),
                                (stream.shape[-1],), eps=self.eps)
            # the distinct layer application e runs (never 0 for e ≥ 1 here: see resolved)
            gate = self.gates[str(ctx.applications[layer_idx].layer)]
            share = torch.sigmoid(F.linear(normed.to(stream.dtype), gate.weight, gate.bias))
            # Handed to this layer's mix_values through the call's context: λ_l as
            # (B, H_kv, T, 1). Never outlives the call.
            ctx.value_residual_shares[layer_idx] = share.transpose(1, 2).unsqueeze(-1)
        return stream

    def mix_values(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   ctx: ForwardContext) -> torch.Tensor:
        if layer_idx == 0:
            ctx.depth_stash[0] = KeyValue(k, v)  # v_0 at the new positions, for later layers
            return v
        v0 = ctx.depth_stash[0].value  # (B, H_kv, T, d)
        if self.mode != "fixed" and v.shape[1] != self.num_kv_heads:
            # Tensor parallelism gives this attention a share of the heads: the gates' λ would
            # broadcast over it, and λ_l's gradient would cover this share's heads only.
            raise DepthAttnError(f"value_residual mode {self.mode!r} cannot run with its kv "
                                 f"heads split (tensor parallelism): this attention computes "
                                 f"{v.shape[1]} of the {self.num_kv_heads}, and its λ "
                                 f"parameters are not split or summed with them; use mode "
                                 f"'fixed'")
        if self.mode == "gated":
            # (B, H_kv, T, 1); dropped from the context once read: only this layer needs it
            share = ctx.value_residual_shares.pop(layer_idx)
        else:
            layer = ctx.applications[layer_idx].layer
            share = 0.5 if self.mode == "fixed" else self.lambdas[layer - 1].to(v.dtype)
        return torch.lerp(v, v0, share)  # (1 − λ)·v_l + λ·v_0

    def mix_entries(self, layer_idx: int, depth_query: Callable[[], torch.Tensor],
                    entry: torch.Tensor, ctx: ForwardContext
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The latent residual (docs/method.md §9): ẽ_l = (1 − λ_l)·e_l + λ_l·e_0 on the whole
        MLA entry [c ; k^R], so it reaches the keys too."""
        if layer_idx == 0:
            ctx.depth_stash[0] = KeyValue(entry, entry)
            return entry, None
        layer = ctx.applications[layer_idx].layer
        share = 0.5 if self.mode == "fixed" else self.lambdas[layer - 1].to(entry.dtype)
        return torch.lerp(entry, ctx.depth_stash[0].value, share), None
