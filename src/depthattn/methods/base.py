"""The two places where a cross-layer method plugs into the decoder.

1. **Inside attention** (`mix_values`): sees layer l's q, k, v at the new positions and the
   per-call depth stash of earlier layers; returns the value that self-attention reads and the
   KV cache stores. Depth-Attention and value residual live here. With multi-head latent
   attention the hook is `mix_entries`: it sees layer l's latent cache entry [c ; k^R] and
   returns the entry that attention reads and the cache stores (docs/method.md §9).
2. **On the residual stream**: around each sublayer, one ``read`` (the sublayer's input, taken
   from the stream) and one ``write`` (its output, added back); ``init_stream`` and
   ``final_hidden`` begin and end the stream. DenseFormer, hyper-connections, mHC, attention
   residuals and MUDDFormer live here.

The defaults are the vanilla pre-norm decoder: v unchanged, read = identity, write = ``+``.
Every hook receives the ``ForwardContext`` of the call (RoPE tables, mask, cache, depth stash,
the schedule of applications); the method itself is the model's, never the call's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol

import torch
from torch import nn

from depthattn.model.config import ModelConfig

if TYPE_CHECKING:
    from depthattn.model.looped import Application

Sublayer = Literal["attn", "mlp"]


# --- what one forward call hands every layer and every hook, and drops when it ends ------------
class LayerCache(Protocol):
    """The part of a KV cache attention uses (``depthattn.model.cache.DecoderCache``);
    transformers' ``Cache.update`` argument order."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' (k, v) of one layer; return the layer's keys and values so far."""
        ...


class KeyValue(NamedTuple):
    """One application's entry in the depth stash, at the new positions."""

    key: torch.Tensor  # (B, H_kv, T, d): k_e, normed and rotated, as its cache holds it
    value: torch.Tensor  # (B, H_kv, T, d): ṽ_e, the mixed value its cache holds


@dataclass(frozen=True)
class AttentionInput:
    """What attention's projections read when keys and values come from streams of their own
    (MUDDFormer's multiway inputs): q_proj reads the block's ``input_layernorm(query)``, k_proj
    and v_proj read ``key`` and ``value``, already through the method's own pre-norms. Every
    other method hands attention one tensor, which all three projections read after the norm."""

    query: torch.Tensor  # (B, T, D); read hands it over before the block's input_layernorm,
    # which the block applies before attention
    key: torch.Tensor  # (B, T, D), normed
    value: torch.Tensor  # (B, T, D), normed


class ForwardContext:
    """One call's shared state. A plain class, not a dataclass, on purpose: FSDP2 (and other
    module hooks) rebuild the dataclasses they find in a module's arguments, and each block must
    write its depth-stash entries into the one dict that later blocks read."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None,
                 is_causal: bool, cache: LayerCache | None = None,
                 applications: Sequence[Application] = (),
                 attention_kwargs: dict | None = None,
                 window_mask: torch.Tensor | None = None) -> None:
        self.cos, self.sin = cos, sin  # (B, T, d) RoPE tables at the new positions
        # (B or 1, 1, T, T_kv): bool, True = may attend, or float, added to the scores; None:
        # is_causal says whether the new tokens attend causally or to every key
        self.attn_mask = attn_mask
        self.is_causal = is_causal
        # the same for sliding-window layers (their window applied); None: no such layer, or
        # the attention function reads no mask
        self.window_mask = window_mask
        self.cache = cache
        # Keywords for the attention function (a serving engine's)
        self.attention_kwargs = attention_kwargs or {}
        # The schedule of this call: application e runs layer applications[e].layer (a looped
        # model's depth may differ from call to call; docs/method.md §7).
        self.applications = applications
        # The depth stash (docs/method.md §4): application j → (k_j, ṽ_j) at the new positions,
        # for the later applications of this call only. Never persists across calls.
        self.depth_stash: dict[int, KeyValue] = {}
        # Value residual's gated λ_e (B, H_kv, T, 1), formed on the stream before attention.
        self.value_residual_shares: dict[int, torch.Tensor] = {}

    def mask_for(self, window: int | None) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) of a layer attending to its last ``window`` tokens (None:
        all)."""
        if window is None or self.window_mask is None:
            return self.attn_mask, self.is_causal
        return self.window_mask, False


# --- what a method declares about itself -------------------------------------------------------
@dataclass(frozen=True)
class MethodCost:
    """What a method adds to the vanilla decoder of the same geometry (per token, forward).

    Counted in elements, not bytes, so the numbers hold for any dtype. The vanilla decoder holds
    d elements of residual stream per in-flight token and 2·L·H_kv·d_h of KV cache per token
    (MLA: L·(d_c + d_rope)).
    """

    added_params: int = 0
    added_flops_per_token: float = 0.0  # forward FLOPs beyond vanilla (multiply-add = 2 FLOPs)
    # The part of added_flops_per_token that the method computes as matrix products (F.linear,
    # matmul, einsum): what a matmul FLOP counter such as torch's FlopCounterMode sees. The rest
    # is elementwise (weighted sums written as sums, softmax, Sinkhorn); each cost() lists it.
    added_matmul_flops_per_token: float = 0.0
    inflight_state_per_token: int = 0  # depth state alive while one token traverses the stack
    persistent_state_per_token: int = 0  # kept across decoding steps beyond the KV cache


@dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options dataclass."""

    def resolved(self, config: ModelConfig) -> MethodOptions:
        """Fill defaults that depend on the model geometry and validate; raise ValueError
        naming the option, its value and what is allowed."""
        return self

    def to_dict(self) -> dict[str, Any]:
        """The options as ``ModelConfig.method_options`` stores them."""
        return dataclasses.asdict(self)


# --- the method: vanilla behaviour at both plug-in points --------------------------------------
class CrossLayerMethod(nn.Module):
    """Vanilla behaviour at both plug-in points; methods override what they change."""

    name: str = "base"
    # Weight decay of this method's parameters, by the last part of their name, where it differs
    # from the optimizer's rule (decay matrices, never vectors or scalars). Read by ``decays``.
    decay_overrides: ClassVar[Mapping[str, bool]] = {}
    # Why this method cannot run a looped config (docs/method.md §7), or None when it can: its hooks are
    # then called with application indices e = 0 .. L_eff − 1 in place of layer indices.
    looped_refusal: ClassVar[str | None] = None
    # Whether a block reads activations of earlier blocks through the call's context (the depth
    # stash) rather than through the stream it is handed: reentrant activation checkpointing,
    # which differentiates through a block's tensor arguments only, would drop their gradients.
    reads_context_activations: ClassVar[bool] = False
    # Whether the entry hook (mix_entries) has parameters whose gradient needs every head of
    # an MLA layer: tensor parallelism, which splits the heads, would leave it partial.
    needs_whole_heads: bool = False

    def __init__(self, config: ModelConfig, options: MethodOptions) -> None:
        super().__init__()
        self.num_layers = config.num_layers
        self.options = options
        self._register_load_state_dict_pre_hook(_scalars_as_vectors, with_module=True)

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

    def mix_entries(self, layer_idx: int, depth_query: Callable[[], torch.Tensor],
                    entry: torch.Tensor, ctx: ForwardContext
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Multi-head latent attention's hook (docs/method.md §9). entry: (B, 1, T, d_c + d_rope),
        layer l's fresh cache entry e_l = [c ; k^R] at the new positions. depth_query(): the
        layer's scoring vector (B, 1, T, d_c + d_rope), computed only when called, scaled so
        that ``depth_mix``'s dot product over √width is the mean over heads of the layer's
        attention logit. Returns the entry attention's keys (and values) read and the cache
        stores, and the latent c̃ (B, 1, T, d_c) its values read instead when they differ
        (Depth-Attention's ``values`` rule), else None."""
        return entry, None

    # --- 2. on the residual stream ---------------------------------------------------------
    def init_stream(self, embeddings: torch.Tensor, ctx: ForwardContext) -> Any:
        """The residual-stream state after the embedding."""
        return embeddings

    def read(self, stream: Any, layer_idx: int, sublayer: Sublayer,
             ctx: ForwardContext) -> torch.Tensor | AttentionInput:
        """The (B, T, D) tensor the sublayer's pre-norm reads (or, for attention, an
        ``AttentionInput`` with keys and values of their own)."""
        return stream

    def write(self, stream: Any, layer_idx: int, sublayer: Sublayer, output: torch.Tensor,
              ctx: ForwardContext) -> Any:
        """The stream after the sublayer wrote ``output`` to it."""
        return stream + output

    def final_hidden(self, stream: Any, ctx: ForwardContext) -> torch.Tensor:
        """The (B, T, D) tensor the final norm reads."""
        return stream

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self.options).items())


def _scalars_as_vectors(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """A method's one-number parameters are 1-D (FSDP2 shards no 0-d parameter); checkpoints
    written when they were 0-d load into them."""
    for name, param in module.named_parameters():
        key = prefix + name
        value = state_dict.get(key)
        if value is not None and value.dim() == 0 and param.shape == (1,):
            state_dict[key] = value.reshape(1)
