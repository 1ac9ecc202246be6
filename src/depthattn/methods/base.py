"""The two places where a cross-layer method plugs into the decoder.

1. **Inside attention** (`mix_values`): sees layer l's q, k, v at the new positions and the
   per-call depth stash of earlier layers; returns the value that self-attention reads and the
   KV cache stores. Depth-Attention and value residual live here.
2. **On the residual stream** (`init_stream`, `sublayer_input`, `sublayer_output`,
   `final_hidden`): how each sublayer's input is formed from the stream and how its output is
   written back. DenseFormer, hyper-connections, mHC, attention residuals live here.

The defaults are the vanilla pre-norm decoder: v unchanged, ``x = x + f(norm(x))``. Every hook
receives the ``ForwardContext`` of the call (RoPE tables, masks, cache, depth stash).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import nn

from depthattn.model.config import ModelConfig

Sublayer = Literal["attn", "mlp"]


# --- what one forward call hands every layer and every hook, and drops when it ends ------------
class LayerCache(Protocol):
    """The part of a KV cache attention uses (``depthattn.model.cache.DecoderCache``);
    transformers' ``Cache.update`` argument order."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' (k, v) of one layer; return the layer's keys and values so far."""
        ...


class ForwardContext:
    """One call's shared state. A plain class, not a dataclass, on purpose: FSDP2 (and other
    module hooks) rebuild the dataclasses they find in a module's arguments, and each block must
    write its depth-stash entries into the one dict that later blocks read."""

    def __init__(self, method: CrossLayerMethod, cos: torch.Tensor, sin: torch.Tensor,
                 attn_mask: torch.Tensor | None, is_causal: bool,
                 cache: LayerCache | None = None) -> None:
        self.method = method  # the hooks of this model
        self.cos, self.sin = cos, sin  # (B, T, d) RoPE tables at the new positions
        self.attn_mask = attn_mask  # (B, 1, T, T_kv) bool, True = may attend; None: is_causal
        self.is_causal = is_causal  # with attn_mask None: causal over the new tokens, or all
        self.cache = cache
        # The depth stash (docs/method.md §4): layer j → (k_j, ṽ_j) at the new positions, for
        # the later layers of this call only. Never persists across calls.
        self.depth_stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


# --- what a method declares about itself -------------------------------------------------------
@dataclass(frozen=True)
class MethodCost:
    """What a method adds to the vanilla decoder of the same geometry (per token, forward).

    Counted in elements, not bytes, so the numbers hold for any dtype. The vanilla decoder holds
    d elements of residual stream per in-flight token and 2·L·H_kv·d_h of KV cache per token.
    """

    added_params: int = 0
    added_flops_per_token: float = 0.0  # forward FLOPs beyond vanilla (multiply-add = 2 FLOPs)
    inflight_state_per_token: int = 0  # depth state alive while one token traverses the stack
    persistent_state_per_token: int = 0  # kept across decoding steps beyond the KV cache


@dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options dataclass."""

    def resolved(self, config: ModelConfig) -> MethodOptions:
        """Fill defaults that depend on the model geometry and validate; raise ValueError
        naming the option, its value and what is allowed."""
        return self


# --- the method: vanilla behaviour at both plug-in points --------------------------------------
class CrossLayerMethod(nn.Module):
    """Vanilla behaviour at both plug-in points; methods override what they change."""

    name: str = "base"
    # Weight decay of this method's parameters, by the last part of their name, where it differs
    # from the optimizer's rule (decay matrices, never vectors or scalars). Read by ``decays``.
    decay_overrides: ClassVar[Mapping[str, bool]] = {}
    # Why this method cannot run a looped config (spec §7), or None when it can: its hooks are
    # then called with application indices e = 0 .. L_eff − 1 in place of layer indices.
    looped_refusal: ClassVar[str | None] = None

    def __init__(self, config: ModelConfig, options: MethodOptions) -> None:
        super().__init__()
        self.num_layers = config.num_layers
        self.options = options

    def decays(self, name: str, param: nn.Parameter) -> bool:
        """Whether weight decay applies to ``param``, named ``name`` relative to this module:
        the override of its last name part if declared, else decay iff it is a matrix."""
        return self.decay_overrides.get(name.rsplit(".", 1)[-1], param.dim() >= 2)

    @classmethod
    def cost(cls, config: ModelConfig, options: MethodOptions) -> MethodCost:
        """Closed-form accounting (tested against the modules' real parameter counts)."""
        return MethodCost(inflight_state_per_token=config.hidden_size)

    # --- 1. inside attention ---------------------------------------------------------------
    def mix_values(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   ctx: ForwardContext) -> torch.Tensor:
        """q: (B, H, T, d) after norm and RoPE; k, v: (B, H_kv, T, d), k as attention uses it.
        Returns the (B, H_kv, T, d) value that attention reads and the cache stores."""
        return v

    # --- 2. on the residual stream ---------------------------------------------------------
    def init_stream(self, embeddings: torch.Tensor, ctx: ForwardContext) -> Any:
        """The residual-stream state after the embedding."""
        return embeddings

    def sublayer_input(self, stream: Any, layer_idx: int, sublayer: Sublayer,
                       ctx: ForwardContext) -> torch.Tensor:
        """The (B, T, D) tensor the sublayer's pre-norm reads."""
        return stream

    def attention_kv_inputs(self, stream: Any, layer_idx: int, normed: torch.Tensor,
                            ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, T, D) inputs of k_proj and v_proj. ``normed`` is the input of q_proj, the
        block's ``input_layernorm`` of ``sublayer_input(stream, layer_idx, "attn")``; by default
        all three projections read it. A method that feeds keys and values from streams of
        their own (MUDDFormer) returns them here, through pre-norms it owns."""
        return normed, normed

    def sublayer_output(self, stream: Any, layer_idx: int, sublayer: Sublayer,
                        output: torch.Tensor, ctx: ForwardContext) -> Any:
        """The stream after the sublayer wrote ``output`` to it."""
        return stream + output

    def final_hidden(self, stream: Any, ctx: ForwardContext) -> torch.Tensor:
        """The (B, T, D) tensor the final norm reads."""
        return stream

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self.options).items())
