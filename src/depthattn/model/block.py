"""One pre-norm decoder block: h = x + Attn(RMSNorm(x)); x' = h + MLP(RMSNorm(h)).

The cross-layer method's residual-stream hooks stand around each equation: what the sublayer
reads (``sublayer_input``) and how its output is added back (``sublayer_output``). For the
vanilla decoder (and Depth-Attention, which works inside attention) they are the identity and
``+``, so the block is exactly the two equations above.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from depthattn.methods.base import ForwardContext
from depthattn.model.attention import Attention
from depthattn.model.config import ModelConfig
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

    def forward(self, stream: Any, ctx: ForwardContext, application: int | None = None) -> Any:
        """``stream``: the residual stream as the method keeps it (vanilla: x, (B, T, D)).
        ``application``: the index e under which this call runs (a looped model applies a
        block several times: the hooks, the depth stash and the KV cache see e); default the
        block's own layer index, which e equals when the model is not looped."""
        method = ctx.method
        l = self.layer_idx if application is None else application

        # h = x + Attn(RMSNorm(x))
        x = method.sublayer_input(stream, l, "attn", ctx)
        normed = self.input_layernorm(x)
        # Extension point: keys and values may read streams of their own (MUDDFormer);
        # every other method returns (normed, normed).
        x_k, x_v = method.attention_kv_inputs(stream, l, normed, ctx)
        h = method.sublayer_output(stream, l, "attn", self.self_attn(normed, ctx, x_k, x_v, l), ctx)

        # x' = h + MLP(RMSNorm(h))
        h_in = method.sublayer_input(h, l, "mlp", ctx)
        return method.sublayer_output(h, l, "mlp", self.mlp(self.post_attention_layernorm(h_in)),
                                      ctx)
