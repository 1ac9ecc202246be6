"""Depth-Attention (Zeng et al., 2026, arXiv 2606.05014): before layer l attends over the
sequence, its query attends over depth — the keys of selected earlier layers at the same
token — and mixes their values into the value that self-attention reads and the cache stores.
No parameters; the only state is the vanilla-sized KV cache (docs/method.md §2–§4)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from depthattn.config import ModelConfig
from depthattn.crosslayer.base import (
    CrossLayerMethod,
    ForwardContext,
    MethodCost,
    MethodOptions,
)
from depthattn.crosslayer.registry import register
from depthattn.ops.depth_mix import depth_mix, depth_mix_reference
from depthattn.utils.checks import require_int

# (layer l, its sources S(l), α of shape (B, H_kv, T, |S(l)| + 1)) -> None
DepthWeightRecorder = Callable[[int, list[int], torch.Tensor], None]


def depth_sources(layer: int, stride: int, recent_window: int) -> list[int]:
    """S(l) = { j : 0 ≤ j < l and (j mod s == 0 or j ≥ l − w) }, ascending (docs/method.md §2)."""
    return [j for j in range(layer) if j % stride == 0 or j >= layer - recent_window]


@dataclass(frozen=True)
class DepthAttentionOptions(MethodOptions):
    stride: int | None = None  # s: every s-th earlier layer is a source; None → max(1, L // 2)
    recent_window: int = 0  # w: the w layers just below l are sources too

    def resolved(self, config: ModelConfig) -> DepthAttentionOptions:
        stride = max(1, config.num_layers // 2) if self.stride is None else self.stride
        require_int("depth_attention option stride", stride, 1,
                    hint=" (1 = every earlier layer is a source)")
        require_int("depth_attention option recent_window", self.recent_window, 0)
        return dataclasses.replace(self, stride=stride)


@register("depth_attention", options=DepthAttentionOptions)
class DepthAttention(CrossLayerMethod):
    def __init__(self, config: ModelConfig, options: DepthAttentionOptions) -> None:
        super().__init__(config, options)
        self.sources = [depth_sources(layer, options.stride, options.recent_window)
                        for layer in range(config.num_layers)]
        # Only layers some later layer reads go into the stash: keeps its memory at |∪ S(l)|.
        self.read_later = frozenset(j for s in self.sources for j in s)
        # Set only while depthattn.analysis.capture_depth_weights is active: α is then computed
        # by the reference mix, which returns it, and handed to the recorder.
        self.recorder: DepthWeightRecorder | None = None

    @classmethod
    def cost(cls, config: ModelConfig, options: DepthAttentionOptions) -> MethodCost:
        """docs/method.md §8 / paper appendix B: per mixing layer, (|S(l)|+1) scores and weighted values of
        H_kv·d each (2 FLOPs per multiply-add), plus H·d for the group means and the softmax.
        No parameters; the stash reuses the KV-cache tensors of the in-flight token."""
        H_kv_d = config.num_kv_heads * config.head_dim
        flops = 0
        for layer in range(config.num_layers):
            n = len(depth_sources(layer, options.stride, options.recent_window))
            if n:
                flops += (n + 1) * (2 * H_kv_d + 2 * H_kv_d) + config.num_heads * config.head_dim
        return MethodCost(added_flops_per_token=float(flops),
                          inflight_state_per_token=config.hidden_size)

    def mix_values(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   ctx: ForwardContext) -> torch.Tensor:
        sources = self.sources[layer_idx]
        if sources:  # layer 0 has none: its value is unchanged
            keys = [ctx.depth_stash[j][0] for j in sources]
            values = [ctx.depth_stash[j][1] for j in sources]  # mixed values ṽ_j: recursive
            if self.recorder is None:
                v = depth_mix(q, keys, values, k, v)  # eq. of docs/method.md §3
            else:
                v, alpha = depth_mix_reference(q, keys, values, k, v, return_weights=True)
                self.recorder(layer_idx, sources, alpha)
        if layer_idx in self.read_later:
            ctx.depth_stash[layer_idx] = (k, v)
        return v
