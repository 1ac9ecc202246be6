"""What one forward call hands every layer and every method hook, and drops when it ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from depthattn.crosslayer.base import CrossLayerMethod


class LayerCache(Protocol):
    """The part of a KV cache attention uses (``depthattn.model.cache.KVCache`` is one)."""

    def update(self, layer_idx: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' (k, v) of one layer; return the layer's keys and values so far."""
        ...


@dataclass
class ForwardContext:
    method: CrossLayerMethod
    cos: torch.Tensor  # (B, T, d) RoPE tables at the new positions
    sin: torch.Tensor
    attn_mask: torch.Tensor | None  # (B, 1, T, T_kv) bool, True = may attend; None: see is_causal
    is_causal: bool  # with attn_mask None: causal over the new tokens (True) or attend to all
    cache: LayerCache | None = None
    # The depth stash (docs/method.md §4): layer j → (k_j, ṽ_j) at the new positions, for the
    # later layers of this call only. Never persists across calls.
    depth_stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
