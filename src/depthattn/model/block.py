"""One pre-norm decoder block: h = x + Attn(RMSNorm(x)); x' = h + MLP(RMSNorm(h)).

The cross-layer method stands around each equation as one read (the sublayer's input, taken
from the stream) and one write (its output, added back). For the vanilla decoder (and for
Depth-Attention, which works inside attention) the read is the identity and the write is ``+``,
so the block is exactly the two equations above.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from depthattn.methods.base import AttentionInput, CrossLayerMethod, ForwardContext
from depthattn.model.attention import Attention
from depthattn.model.config import ModelConfig
from depthattn.model.latent_attention import LatentAttention
from depthattn.model.mlp import MLP
from depthattn.model.norm import RMSNorm


class Block(nn.Module):
    attention_class: type[Attention] = Attention  # the Hugging Face layer's calls its interface
    latent_attention_class: type[LatentAttention] = LatentAttention  # attention="mla"

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        kind = self.latent_attention_class if config.attention == "mla" else self.attention_class
        self.self_attn = kind(config, layer_idx)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, stream: Any, method: CrossLayerMethod, ctx: ForwardContext,
                application: int | None = None) -> Any:
        """``stream``: the residual stream as the method keeps it (vanilla: x, (B, T, D)).
        ``application``: the index e under which this call runs (a looped model applies a
        block several times: the method, the depth stash and the KV cache see e); default the
        block's own layer index, which e equals when the model is not looped."""
        e = self.layer_idx if application is None else application

        # h = x + Attn(RMSNorm(x))
        x = method.read(stream, e, "attn", ctx)
        out, _ = self.self_attn(self.attention_input(x), method, ctx, e)  # _: the weights
        h = method.write(stream, e, "attn", out, ctx)

        # x' = h + MLP(RMSNorm(h))
        x = method.read(h, e, "mlp", ctx)
        return method.write(h, e, "mlp", self.mlp(self.post_attention_layernorm(x)), ctx)

    def attention_input(self, x: torch.Tensor | AttentionInput) -> torch.Tensor | AttentionInput:
        """RMSNorm(x); a multiway input (MUDDFormer) brings its keys and values already normed."""
        if isinstance(x, AttentionInput):
            return dataclasses.replace(x, query=self.input_layernorm(x.query))
        return self.input_layernorm(x)
