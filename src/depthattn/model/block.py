"""One pre-norm decoder block: h = x + Attn(RMSNorm(x)); x' = h + MLP(RMSNorm(h)).

The residual-stream method decides what each sublayer reads and how its output is written
back; for the vanilla decoder (and Depth-Attention) these are exactly the two equations above.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from depthattn.config import ModelConfig
from depthattn.model.attention import Attention
from depthattn.model.context import ForwardContext
from depthattn.model.mlp import MLP
from depthattn.model.norm import RMSNorm


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, stream: Any, ctx: ForwardContext) -> Any:
        residual, i = ctx.method, self.layer_idx
        x = self.input_layernorm(residual.sublayer_input(stream, i, "attn", ctx))
        x_k, x_v = residual.attention_kv_inputs(stream, i, x, ctx)  # vanilla: x, x
        stream = residual.sublayer_output(stream, i, "attn", self.self_attn(x, ctx, x_k, x_v),
                                          ctx)
        h = residual.sublayer_input(stream, i, "mlp", ctx)
        stream = residual.sublayer_output(stream, i, "mlp",
                                          self.mlp(self.post_attention_layernorm(h)), ctx)
        return stream
