"""Attention Residuals as the Depth-Attention authors ran them ("AttnRes", hyq718's cumulative
sources + recency bias; docs/baselines.md §7A; Kimi Team, arXiv 2603.15031, as adapted by
wdlctc/open-attention-residuals plus a final aggregator).

State per call: sources S = [h₀, snapshots of P], the running residual P = h₀ + Σ sublayer outputs
(exactly the vanilla residual sum), and the sublayer count c. Before every sublayer, and once
before the final norm, an aggregator with pseudo-query q, key gain g and recency bias b reads

    logit_j = ⟨q ⊙ g, s_j⟩ / rms(s_j)  (s_j ∈ S),   logit_P = ⟨q ⊙ g, P⟩ / rms(P) + b,
    u = Σ_j w_j s_j + w_P P,   w = softmax(logits) in fp32   (values raw, keys RMS-normed)

and the sublayer adds F(u) to P (not to u). At the end of a layer, if c ≥ block_size (counted in
sublayers, 12 in the paper: every 6 layers), P is appended to S and c resets.

Init: q = 0, g = 1, b = 3 ⇒ w_P = e³ / (|S| + e³): 0.95 in the first block, 0.72 in the last
block of a 48-layer model, 0.69 in the final aggregator. So this is *not* vanilla at init; only
the first sublayer is (S = [h₀] = [P]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from depthattn.methods.base import (
    CrossLayerMethod,
    MethodCost,
    MethodOptions,
    Sublayer,
)
from depthattn.methods.registry import register
from depthattn.utils.checks import require_int
from depthattn.utils.errors import DepthAttnError

if TYPE_CHECKING:
    from depthattn.methods.base import ForwardContext
    from depthattn.model.config import ModelConfig


def inverse_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(x²) + eps) in fp32, (B, T, D) → (B, T). Through a fp32 vector norm of x
    itself: autograd then keeps a reference to x, not a fp32 copy per call (there are 2L+1)."""
    norm = torch.linalg.vector_norm(x, dim=-1, dtype=torch.promote_types(x.dtype, torch.float32))
    return torch.rsqrt(norm.square() / x.shape[-1] + eps)


class DepthAggregator(nn.Module):
    """softmax over depth with one learned pseudo-query (Kimi eq. 2–4): keys are the RMS-normed
    sources with a learnable gain, values the raw sources; an optional bias on the last source."""

    def __init__(self, dim: int, eps: float, recency_bias: float | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.recency_bias_init = recency_bias
        self.query = nn.Parameter(torch.empty(dim))  # q (Kimi's w_l)
        self.key_gain = nn.Parameter(torch.empty(dim))  # g, the keys' RMSNorm gain
        if recency_bias is not None:
            self.recency_bias = nn.Parameter(torch.empty(1))  # b, on the last source only (1-D for FSDP2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """q = 0 (uniform weights over depth, before the bias), g = 1, b as configured."""
        nn.init.zeros_(self.query)
        nn.init.ones_(self.key_gain)
        if self.recency_bias_init is not None:
            nn.init.constant_(self.recency_bias, self.recency_bias_init)

    def forward(self, sources: list[torch.Tensor],
                inv_rms: list[torch.Tensor | None]) -> torch.Tensor:
        """sources: n tensors (B, T, D), the recency bias goes to the last; inv_rms: their
        cached 1/rms (B, T) where known, None to compute it here. Returns (B, T, D)."""
        dtype = sources[0].dtype
        acc = torch.promote_types(dtype, torch.float32)  # softmax and sums: fp32 at least
        w = (self.query * self.key_gain).to(dtype)  # q ⊙ g: the two enter only as a product
        logits = []
        for s, r in zip(sources, inv_rms):
            r = inverse_rms(s, self.eps) if r is None else r
            # ⟨q ⊙ g, s⟩ in the activation dtype, then × 1/rms in fp32 (as hyq718, §7A e)
            logits.append((s @ w).to(acc) * r)
        if self.recency_bias_init is not None:
            logits[-1] = logits[-1] + self.recency_bias.to(acc)
        weights = torch.stack(logits, dim=-1).softmax(dim=-1)  # (B, T, n), eq. 2 in fp32
        # Σ_j w_j s_j term by term in fp32: each product saves only a reference to s_j for
        # backward, a stacked copy of the sources would not.
        out = torch.zeros(sources[0].shape, dtype=weights.dtype, device=weights.device)
        for j, s in enumerate(sources):
            out = out + weights[..., j, None] * s
        return out.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.query.shape[0]}, recency_bias={self.recency_bias_init}"


def snapshot_layers(num_layers: int, block_size: int) -> list[int]:
    """The 0-based layers after which P joins the sources: c counts sublayers, two per layer,
    and is checked (and reset) only at the end of a layer (§7A a, "block bookkeeping")."""
    layers, count = [], 0
    for layer in range(num_layers):
        count += 2
        if count >= block_size:
            layers.append(layer)
            count = 0
    return layers


def sources_per_aggregator(num_layers: int, block_size: int) -> list[int]:
    """|S| + 1 (the sources and P) seen by each aggregator, in call order: attn and mlp of
    layer 0, ..., of layer L−1, final."""
    snapshots, counts, held = set(snapshot_layers(num_layers, block_size)), [], 1
    for layer in range(num_layers):
        counts += [held + 1, held + 1]
        held += layer in snapshots
    return counts + [held + 1]


@dataclass(frozen=True)
class AttnResOptions(MethodOptions):
    block_size: int = 12  # sublayers between snapshots of P (12 = every 6 layers, the paper's)
    recency_bias: float = 3.0  # initial logit bonus of the running residual P

    def resolved(self, config: ModelConfig) -> AttnResOptions:
        require_int("attnres option block_size", self.block_size, 1,
                    hint=" (sublayers per block; the paper uses 12)")
        bias = self.recency_bias
        if not isinstance(bias, (int, float)) or isinstance(bias, bool) or not math.isfinite(bias):
            raise DepthAttnError(f"attnres option recency_bias ({bias!r}) must be a finite number "
                                 f"(the paper uses 3.0)")
        return self


@dataclass(frozen=True)
class AttnResStream:
    """Per-call residual state; replaced, never mutated (activation checkpointing recomputes a
    block from the state object it was first given)."""

    sources: tuple[torch.Tensor, ...]  # S: h₀ and the snapshots of P, each (B, T, D)
    inv_rms: tuple[torch.Tensor, ...]  # their 1/rms (B, T), cached once when committed
    partial: torch.Tensor  # P: the running residual, (B, T, D)


@register("attnres", options=AttnResOptions)
class AttnRes(CrossLayerMethod):
    """One aggregator before each sublayer (`attn.{l}`, `mlp.{l}`) and one before the final
    norm (`final`); attention itself is vanilla."""
    looped_refusal = ("its depth aggregators are per layer and sized by the number of earlier "
                      "layer outputs (num_layers), which a looped model has per application")

    # Weight decay as in the Depth-Attention authors' comparison (docs/baselines.md §1, §7A(e)):
    # their grouping decayed the pseudo-query q with 0.1 but not the bias (by its name) nor the
    # key gain (an RMSNorm gain there). The default rule leaves vectors undecayed, so q is named.
    decay_overrides = {"query": True}

    def __init__(self, config: ModelConfig, options: AttnResOptions) -> None:
        super().__init__(config, options)
        d, eps, bias = config.hidden_size, config.rms_norm_eps, float(options.recency_bias)
        self.eps = eps
        self.snapshot_after = frozenset(snapshot_layers(config.num_layers, options.block_size))
        self.attn = nn.ModuleList(DepthAggregator(d, eps, bias) for _ in range(config.num_layers))
        self.mlp = nn.ModuleList(DepthAggregator(d, eps, bias) for _ in range(config.num_layers))
        self.final = DepthAggregator(d, eps, bias)

    @classmethod
    def cost(cls, config: ModelConfig, options: AttnResOptions) -> MethodCost:
        """§7A b: 2L + 1 aggregators of 2d + 1 parameters. FLOPs: per aggregator and source a
        dot product (2d, matmul-class: s @ (q ⊙ g)) and a weighted add (2d, elementwise), plus
        P's rms (2d); each snapshot's rms once (2d).
        §7A c: h₀ and the snapshots, each with its cached 1/rms (d + 1), and P (d). A snapshot
        taken after the last layer is P itself (the final aggregator reads it twice), so P then
        adds nothing: 9·d + 9 at 3B, where the snapshot after layer 47 is the eighth."""
        L, d = config.num_layers, config.hidden_size
        after = snapshot_layers(L, options.block_size)
        counts = sources_per_aggregator(L, options.block_size)
        flops = sum(4 * d * n + 2 * d for n in counts)
        flops += 2 * d * (len(after) + 1)  # h₀'s rms too
        kept = len(after) + 1  # h₀ and the snapshots
        partial = 0 if after and after[-1] == L - 1 else 1  # P, unless the last snapshot is P
        return MethodCost(added_params=(2 * L + 1) * (2 * d + 1),
                          added_flops_per_token=float(flops),
                          added_matmul_flops_per_token=float(sum(2 * d * n for n in counts)),
                          inflight_state_per_token=(kept + partial) * d + kept)

    def init_stream(self, embeddings: torch.Tensor, ctx: ForwardContext) -> AttnResStream:
        return AttnResStream(sources=(embeddings,), inv_rms=(inverse_rms(embeddings, self.eps),),
                             partial=embeddings)

    def _aggregate(self, aggregator: DepthAggregator, stream: AttnResStream) -> torch.Tensor:
        return aggregator([*stream.sources, stream.partial], [*stream.inv_rms, None])

    def read(self, stream: AttnResStream, layer_idx: int, sublayer: Sublayer,
             ctx: ForwardContext) -> torch.Tensor:
        aggregators = self.attn if sublayer == "attn" else self.mlp
        return self._aggregate(aggregators[layer_idx], stream)

    def write(self, stream: AttnResStream, layer_idx: int, sublayer: Sublayer, output: torch.Tensor,
              ctx: ForwardContext) -> AttnResStream:
        partial = stream.partial + output  # P ← P + F(u): the vanilla residual sum
        if sublayer == "mlp" and layer_idx in self.snapshot_after:
            return AttnResStream(sources=(*stream.sources, partial),
                                 inv_rms=(*stream.inv_rms, inverse_rms(partial, self.eps)),
                                 partial=partial)
        return AttnResStream(stream.sources, stream.inv_rms, partial)

    def final_hidden(self, stream: AttnResStream, ctx: ForwardContext) -> torch.Tensor:
        return self._aggregate(self.final, stream)  # hyq718's addition; wdlctc uses norm(P)
