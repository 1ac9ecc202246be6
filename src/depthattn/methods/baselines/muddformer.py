"""MUDDFormer — multiway dynamic dense connections (Xiao et al., 2025, arXiv 2502.12170;
Caiyun-AI/MUDDFormer; docs/baselines.md §8).

Every layer output is kept: X_0 = h₀, X_i = output of layer i (1-based). After layer i, a small
MLP of the *latest* output gives, per token, C × (i+1) unconstrained weights:

    a_i   = GELU(RMSNorm₀(X_i) W1_i) W2_i + b_i ∈ ℝ^{C×(i+1)}      RMSNorm₀: no gain
    X_i^c = Σ_{j=0..i} a_i[c, j] X_j,    c ∈ (Q, K, V, R) for i < L,  c ∈ (R) for i = L

and layer i+1 reads its query, key and value projections from three different streams, each
through its own pre-norm, and adds the attention output to the R stream:

    A       = X_i^R + Attn(q ← RMSNorm_q(X_i^Q), k ← RMSNorm_k(X_i^K), v ← RMSNorm_v(X_i^V))
    X_{i+1} = A + MLP(RMSNorm(A))

Layer 1 reads h₀ for all four with its one pre-norm. X_L^R goes to the final norm. Here
RMSNorm_q is the block's own ``input_layernorm`` and RMSNorm_k / RMSNorm_v (layers 2..L) live in
this module, so the backbone keeps Qwen3's parameter names.

Hidden width of the weight MLP: H_i = 64·(⌊C·(i+1)·e/64⌋ + 1), e = ``hidden_expand`` (1) and
``last_hidden_expand`` (4) for the last layer. Init (their JAX training code): W1 ~ N(0, 1/d),
W2 = 0, b_i = [0, …, 0, 1] for every stream ⇒ every stream is the latest output ⇒ vanilla.

Keys and values read their own streams: ``read`` hands attention an ``AttentionInput``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from depthattn.methods.base import (
    AttentionInput,
    CrossLayerMethod,
    MethodCost,
    MethodOptions,
    Sublayer,
)
from depthattn.methods.registry import register
from depthattn.utils.errors import DepthAttnError
from depthattn.model.norm import RMSNorm
from depthattn.utils.checks import require_int

if TYPE_CHECKING:
    from depthattn.methods.base import ForwardContext
    from depthattn.model.config import ModelConfig

STREAMS = ("q", "k", "v", "r")  # C = 4 for every layer but the last (C = 1: r only)
HIDDEN_ROUNDING = 64


@dataclass(frozen=True)
class MUDDFormerOptions(MethodOptions):
    hidden_expand: int = 1  # e: width of the weight MLP per output weight (paper: 1)
    last_hidden_expand: int = 4  # e of the last layer, which has one stream (paper: 4)

    def resolved(self, config: ModelConfig) -> MUDDFormerOptions:
        require_int("muddformer option hidden_expand", self.hidden_expand, 1)
        require_int("muddformer option last_hidden_expand", self.last_hidden_expand, 1)
        if config.attention == "mla":
            raise DepthAttnError("muddformer cannot run on multi-head latent attention "
                                 "(attention='mla'): it feeds attention separate key and value "
                                 "streams, which have no place in one latent entry")
        return self


def streams_after(layer: int, num_layers: int) -> int:
    """C after 1-based layer i: 4 (Q, K, V, R), or 1 (R) after the last layer."""
    return len(STREAMS) if layer < num_layers else 1


def hidden_width(layer: int, num_layers: int, options: MUDDFormerOptions) -> int:
    """H_i = 64·(⌊C·(i+1)·e/64⌋ + 1) — always rounds *up by* at least 64, as the reference."""
    expand = options.hidden_expand if layer < num_layers else options.last_hidden_expand
    outputs = streams_after(layer, num_layers) * (layer + 1)
    return HIDDEN_ROUNDING * (outputs * expand // HIDDEN_ROUNDING + 1)


class _DenseMix(torch.autograd.Function):
    """out[..., c, :] = Σ_j w[..., c, j] · X_j: weights (B, T, C, J), J sources (B, T, D) →
    (B, T, C, D), in the sources' dtype with autocast off.

    Autograd through ``w @ torch.stack(sources)`` would save a stacked copy of all earlier
    outputs at every layer — L(L+1)/2 activations of size d per token over the stack, against
    the L+1 that exist. Here the stack is transient and rebuilt in backward; only references to
    the sources (alive anyway) are saved."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, *sources: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weights, *sources)
        with torch.autocast(sources[0].device.type, enabled=False):
            stacked = torch.stack(sources, dim=-2)  # (B, T, J, D)
            return torch.matmul(weights.to(stacked.dtype), stacked)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weights, *sources = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            stacked = torch.stack(sources, dim=-2)  # (B, T, J, D)
            grad = grad.to(stacked.dtype)
            grad_weights = None
            if ctx.needs_input_grad[0]:
                grad_weights = torch.matmul(grad, stacked.transpose(-1, -2)).to(weights.dtype)
            grad_sources = torch.matmul(weights.to(stacked.dtype).transpose(-1, -2), grad)
        return (grad_weights, *grad_sources.unbind(-2))


def dense_mix(weights: torch.Tensor, sources: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Σ_j weights[..., c, j] · sources[j] for every stream c: (B, T, C, J) → (B, T, C, D)."""
    return _DenseMix.apply(weights, *sources)


@dataclass(frozen=True)
class DenseState:
    """The residual-stream state between hooks; rebuilt, never mutated (activation
    checkpointing re-runs a block on the same input state)."""

    sources: tuple[torch.Tensor, ...]  # X_0 … X_i, each (B, T, D)
    q: torch.Tensor | None  # inputs of the next attention's projections, before their norms
    k: torch.Tensor | None
    v: torch.Tensor | None
    residual: torch.Tensor  # the R stream; after the attention sublayer, A = R + Attn(…)


class DenseConnection(nn.Module):
    """The weights after one layer, and that layer's own key/value pre-norms (if any)."""

    def __init__(self, hidden_size: int, num_sources: int, num_streams: int, hidden: int,
                 separate_kv_norms: bool, eps: float) -> None:
        super().__init__()
        self.num_sources, self.num_streams, self.eps = num_sources, num_streams, eps
        self.w1 = nn.Parameter(torch.empty(hidden, hidden_size))  # as F.linear weights
        self.w2 = nn.Parameter(torch.empty(num_streams * num_sources, hidden))
        self.bias = nn.Parameter(torch.empty(num_streams * num_sources))  # b: (C, J) row-major
        if separate_kv_norms:  # layers 2..L: the q stream keeps the block's input_layernorm
            self.k_norm = RMSNorm(hidden_size, eps)
            self.v_norm = RMSNorm(hidden_size, eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """W1 ~ N(0, 1/d) (fan-in), W2 = 0, b = "current only" ⇒ every stream = X_i."""
        nn.init.normal_(self.w1, std=self.w1.shape[1] ** -0.5)
        nn.init.zeros_(self.w2)
        bias = torch.zeros(self.num_streams, self.num_sources)
        bias[:, -1] = 1.0
        self.bias.copy_(bias.flatten())

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """a_i from the latest output x (B, T, D): (B, T, C, J) in fp32."""
        B, T, _ = x.shape
        h = x.float()
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)  # RMSNorm₀
        a = F.linear(F.gelu(F.linear(h, self.w1)), self.w2).float() + self.bias.float()
        return a.view(B, T, self.num_streams, self.num_sources)


@register("muddformer", options=MUDDFormerOptions)
class MUDDFormer(CrossLayerMethod):
    looped_refusal = ("its dense connections have widths that grow with the number of earlier "
                      "layers (num_layers); a looped model would need them per application")
    name = "muddformer"

    def __init__(self, config: ModelConfig, options: MUDDFormerOptions) -> None:
        super().__init__(config, options)
        L = config.num_layers
        # layers[l] (0-based) holds block l's key/value pre-norms (l ≥ 1) and the weights
        # computed from its output (1-based layer l+1, over l+2 sources)
        self.layers = nn.ModuleList(
            DenseConnection(config.hidden_size, num_sources=l + 2,
                            num_streams=streams_after(l + 1, L),
                            hidden=hidden_width(l + 1, L, options),
                            separate_kv_norms=l > 0, eps=config.rms_norm_eps)
            for l in range(L))

    @classmethod
    def cost(cls, config: ModelConfig, options: MUDDFormerOptions) -> MethodCost:
        """Params Σ_i [d·H_i + H_i·C_i(i+1) + C_i(i+1)] + 2d(L−1) (docs/baselines.md §8(b)). FLOPs after
        layer i (2 per multiply-add; norms and GELU not counted): W1 2·d·H_i, W2 2·H_i·C_i(i+1),
        mixes 2·C_i·(i+1)·d, all matmul-class. State: all L+1 outputs plus the 4 stream
        inputs (§3); measured, the widest point is the last attention's: L outputs, the 4
        streams, and A = X^R + Attn(…)."""
        L, d = config.num_layers, config.hidden_size
        params, flops = 2 * d * (L - 1), 0
        for i in range(1, L + 1):
            H, weights = hidden_width(i, L, options), streams_after(i, L) * (i + 1)
            params += d * H + H * weights + weights
            flops += 2 * d * H + 2 * H * weights + 2 * weights * d
        return MethodCost(added_params=params, added_flops_per_token=float(flops),
                          added_matmul_flops_per_token=float(flops),
                          inflight_state_per_token=(L + 1) * d + len(STREAMS) * d)

    def init_stream(self, embeddings: torch.Tensor, ctx: ForwardContext) -> DenseState:
        x = embeddings  # layer 1 reads h₀ for Q, K, V and R
        return DenseState(sources=(x,), q=x, k=x, v=x, residual=x)

    def read(self, stream: DenseState, layer_idx: int, sublayer: Sublayer,
             ctx: ForwardContext) -> torch.Tensor | AttentionInput:
        if sublayer == "mlp":
            return stream.residual
        if layer_idx == 0:  # one stream, one pre-norm
            return stream.q
        layer = self.layers[layer_idx]  # keys and values through their own pre-norms
        return AttentionInput(query=stream.q, key=layer.k_norm(stream.k),
                              value=layer.v_norm(stream.v))

    def write(self, stream: DenseState, layer_idx: int, sublayer: Sublayer, output: torch.Tensor,
              ctx: ForwardContext) -> DenseState:
        if sublayer == "attn":  # A = X^R + Attn(…)
            return dataclasses.replace(stream, residual=stream.residual + output)
        x = stream.residual + output  # X_{l+1} = A + MLP(RMSNorm(A))
        sources = (*stream.sources, x)
        mixed = dense_mix(self.layers[layer_idx].weights(x), sources)  # (B, T, C, D)
        if mixed.shape[-2] == 1:  # after the last layer: R only
            return DenseState(sources=sources, q=None, k=None, v=None, residual=mixed[..., 0, :])
        q, k, v, r = mixed.unbind(-2)
        return DenseState(sources=sources, q=q, k=k, v=v, residual=r)

    def final_hidden(self, stream: DenseState, ctx: ForwardContext) -> torch.Tensor:
        return stream.residual

