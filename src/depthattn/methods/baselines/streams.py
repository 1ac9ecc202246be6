"""The n parallel residual streams shared by hyper-connections (hyper_connections.py) and mHC
(mhc.py): the stream state, its expansion after the embedding, the stream-axis matmul, and the
method skeleton with one connector per sublayer (docs/baselines.md §5, §6).

A connector is any module with ``maps(x)`` (computed once from the streams x (B, T, n, D) before
its sublayer: the input weights, then the maps the update needs), ``branch_input(x, weights)``
(the sublayer's (B, T, D) input) and ``update(x, output, *maps)`` (the streams after it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from depthattn.methods.base import (
    CrossLayerMethod,
    ForwardContext,
    MethodOptions,
    Sublayer,
)
from depthattn.model.config import ModelConfig


@dataclass
class Streams:
    """The n residual streams of every token, and what the connector of the sublayer in flight
    computed from them in ``read`` for use in ``write``.

    ``maps`` is only meaningful between those two calls of one sublayer; ``write``
    returns a fresh ``Streams`` without it. (A recomputed block under activation checkpointing
    sets it again from the same streams, to the same values.)
    """

    x: torch.Tensor  # (B, T, n, D)
    maps: tuple[torch.Tensor, ...] | None = None


def mix_streams(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weights @ x`` over the stream axis: (B, T, m, n) @ (B, T, n, D) → (B, T, m, D).

    Runs in the streams' dtype with autocast off: under bf16 autocast a matmul would round the
    fp32 residual streams to bf16, which the vanilla residual add (``x + f(x)``) never does."""
    with torch.autocast(x.device.type, enabled=False):
        return torch.matmul(weights.to(x.dtype), x)


def expand_streams(embeddings: torch.Tensor, num_streams: int) -> Streams:
    """n copies of h₀: (B, T, D) → (B, T, n, D), a broadcast view until the first update."""
    B, T, D = embeddings.shape
    return Streams(embeddings.unsqueeze(-2).expand(B, T, num_streams, D))


def sublayer_index(layer_idx: int, sublayer: Sublayer) -> int:
    """The position of a sublayer in the stack: attention of layer l is 2l, its MLP 2l + 1."""
    return 2 * layer_idx + (sublayer == "mlp")


class StreamConnectors(CrossLayerMethod):
    """n residual streams with one connector per sublayer (2L in all), shared by HC and mHC.

    A connector's ``maps(x)`` returns (input weights, *update maps), computed once from the
    streams before the sublayer; ``branch_input`` forms the sublayer's input and ``update``
    writes its output back. Subclasses give the connector of each sublayer and the readout.
    """

    def __init__(self, config: ModelConfig, options: MethodOptions, num_streams: int,
                 connector: Callable[[int], nn.Module]) -> None:
        """``connector(k)``: the connector of sublayer k (attention of layer l is 2l, MLP 2l+1)."""
        super().__init__(config, options)
        self.num_streams = num_streams
        self.connectors = nn.ModuleList(connector(k) for k in range(2 * config.num_layers))

    def init_stream(self, embeddings: torch.Tensor, ctx: ForwardContext) -> Streams:
        return expand_streams(embeddings, self.num_streams)

    def read(self, stream: Streams, layer_idx: int, sublayer: Sublayer,
             ctx: ForwardContext) -> torch.Tensor:
        connector = self.connectors[sublayer_index(layer_idx, sublayer)]
        input_weights, *update_maps = connector.maps(stream.x)  # once, before the sublayer
        stream.maps = tuple(update_maps)
        return connector.branch_input(stream.x, input_weights)

    def write(self, stream: Streams, layer_idx: int, sublayer: Sublayer, output: torch.Tensor,
              ctx: ForwardContext) -> Streams:
        connector = self.connectors[sublayer_index(layer_idx, sublayer)]
        return Streams(connector.update(stream.x, output, *stream.maps))
