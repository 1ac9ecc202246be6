"""Capture Depth-Attention's weights α per layer, kv head and token (for heatmaps).

The normal forward never computes α separately: only while a capture is active does the
Depth-Attention module (its ``recorder`` is set) call the reference with ``return_weights=True``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from depthattn.methods import CrossLayerMethod
from depthattn.methods.depth_attention import DepthAttention


class DepthWeights:
    """α of every mixing layer, concatenated over the forward calls made during the capture.

    ``weights[l]``: (B, H_kv, T, |S(l)|+1), float32; the last slot is layer l itself.
    ``sources[l]``: the source layers S(l) in slot order (without l itself).
    """

    def __init__(self) -> None:
        self.sources: dict[int, list[int]] = {}
        self._chunks: dict[int, list[torch.Tensor]] = {}

    def record(self, layer_idx: int, sources: list[int], alpha: torch.Tensor) -> None:
        self.sources[layer_idx] = list(sources)
        self._chunks.setdefault(layer_idx, []).append(alpha.detach().float())

    @property
    def weights(self) -> dict[int, torch.Tensor]:
        return {layer: torch.cat(chunks, dim=2) for layer, chunks in self._chunks.items()}

    @property
    def layers(self) -> list[int]:
        """The layers (applications) that mixed, ascending."""
        return sorted(self._chunks)


@contextmanager
def capture_depth_weights(model: nn.Module) -> Iterator[DepthWeights]:
    """``with capture_depth_weights(model) as rec: model(ids)`` then read ``rec.weights``.

    Works with cached decoding too: each call appends its tokens along the T axis. Layers
    without sources (layer 0, or every layer of a vanilla model) record nothing.
    """
    if not any(isinstance(m, CrossLayerMethod) for m in model.modules()):
        raise TypeError(f"{type(model).__name__} is not a depthattn model")
    recorder = DepthWeights()
    methods = [m for m in model.modules() if isinstance(m, DepthAttention)]  # also in a+b
    previous = [m.recorder for m in methods]
    for method in methods:
        method.recorder = recorder.record
    try:
        yield recorder
    finally:
        for method, earlier in zip(methods, previous):
            method.recorder = earlier
