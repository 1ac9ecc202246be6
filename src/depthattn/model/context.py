"""What one forward call shares across layers, and drops when it ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from depthattn.analysis.depth_weights import DepthWeights
    from depthattn.crosslayer.base import CrossLayerMethod
    from depthattn.model.cache import KVCache


@dataclass
class ForwardContext:
    method: CrossLayerMethod
    cos: torch.Tensor  # (B, T, d) RoPE tables at the new positions
    sin: torch.Tensor
    attn_mask: torch.Tensor | None  # (B, 1, T, T_kv) bool, True = may attend; None: see is_causal
    is_causal: bool  # with attn_mask None: causal over the new tokens (True) or attend to all
    cache: KVCache | None = None
    # The depth stash (spec §4): layer j → (k_j, ṽ_j) at the new positions, for the later
    # layers of this call only. Never persists across calls.
    depth_stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    recorder: DepthWeights | None = None  # set only while capturing depth weights
