"""DenseFormer (Pagliardini et al., 2024, arXiv 2402.02622): after block i, a Depth-Weighted
Average (DWA) of the embedding and every earlier block output replaces the residual stream.

docs/baselines.md §4, 1-based i = layer_idx + 1, Y_0 = h₀ (the embedding), Y_i = block i's raw output
(the unmodified pre-norm block, including its own two residual adds, applied to x_{i−1}):

    x_i = Σ_{j ∈ J_i} α_{i,j} · Y_j   if i mod p == 0,   else x_i = Y_i,
    J_i = { j ≤ i : j ≡ i (mod k) }   (|J_i| = ⌊i/k⌋ + 1; k dilation, p period).

The history holds block outputs Y_j, never DWA results; the DWA after the last block feeds the
final norm. α are static scalars (no softmax, may be negative), identity-initialised
(α_{i,i} = 1, others 0), so the model is exactly vanilla at step 0. The Depth-Attention authors
ran k = p = 1 (the full, most expensive DenseFormer), our default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
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

if TYPE_CHECKING:
    from depthattn.methods.base import ForwardContext
    from depthattn.model.config import ModelConfig


def dwa_sources(i: int, dilation: int) -> list[int]:
    """J_i = { j ≤ i : j ≡ i (mod k) }, ascending; i is 1-based, 0 is the embedding (§4a)."""
    return list(range(i % dilation, i + 1, dilation))


def dwa_positions(num_layers: int, period: int) -> list[int]:
    """The 1-based blocks followed by a DWA: i mod p == 0."""
    return [i for i in range(1, num_layers + 1) if i % period == 0]


def live_outputs(num_layers: int, dilation: int, period: int) -> list[frozenset[int]]:
    """live[i]: the outputs Y_j (j ≤ i) that must still exist right after block i ran — those
    the DWA at i or a later one reads — plus Y_i itself (it is the stream). Entry 0 is h₀."""
    positions = dwa_positions(num_layers, period)
    live = []
    for i in range(num_layers + 1):
        read = {j for later in positions if later >= i for j in dwa_sources(later, dilation)}
        live.append(frozenset({j for j in read if j <= i} | {i}))
    return live


@dataclass(frozen=True)
class DenseFormerOptions(MethodOptions):
    dilation: int = 1  # k: the DWA after block i reads the outputs j ≡ i (mod k)
    period: int = 1  # p: a DWA follows every p-th block

    def resolved(self, config: ModelConfig) -> DenseFormerOptions:
        for name in ("dilation", "period"):
            require_int(f"denseformer option {name}", getattr(self, name), 1, config.num_layers,
                        high_name="num_layers", hint=" (1 = the paper's setting)")
        return self


class DepthWeightedAverage(nn.Module):
    """One DWA: Σ_j α_j Y_j over a fixed list of sources."""

    def __init__(self, sources: list[int]) -> None:
        super().__init__()
        self.sources = sources  # J_i, ascending: the last one is the block just computed
        # A plain Parameter, not nn.Linear: a generic "init every Linear" pass would silently
        # destroy the identity init (the epfml README's warning, docs/baselines.md §4(e)).
        self.alpha = nn.Parameter(torch.empty(len(sources)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Identity: α_{i,i} = 1, every other weight 0 ⇒ x_i = Y_i (vanilla)."""
        with torch.no_grad():
            self.alpha.zero_()
            self.alpha[-1] = 1.0

    def forward(self, outputs: Mapping[int, torch.Tensor]) -> torch.Tensor:
        # Term by term, accumulated in fp32 (hyq718 sums up to 49 bf16 terms in bf16, §4e).
        # A loop rather than torch.stack: each product saves only a reference to Y_j for
        # backward, while a stacked copy per DWA would cost O(L²) activation memory.
        first = outputs[self.sources[0]]
        acc = torch.zeros(first.shape, dtype=torch.promote_types(first.dtype, torch.float32),
                          device=first.device)
        for weight, j in zip(self.alpha.to(first.dtype), self.sources):
            acc = acc + weight * outputs[j]
        return acc.to(first.dtype)

    def extra_repr(self) -> str:
        return f"sources={self.sources}"


@dataclass(frozen=True)
class DenseStream:
    """Per-call residual state: the block outputs still needed, and the current stream x."""

    outputs: Mapping[int, torch.Tensor]  # j → Y_j (0 = h₀), only those a later DWA reads
    x: torch.Tensor  # (B, T, D): what the next sublayer reads


@register("denseformer", options=DenseFormerOptions)
class DenseFormer(CrossLayerMethod):
    """Residual-stream method; attention is vanilla. State objects are never mutated (a block
    recomputed under activation checkpointing must see the same history as the first pass)."""
    looped_refusal = ("its depth-weighted averages have one weight per earlier layer output, "
                      "sized by num_layers; a looped model would need them per application, which "
                      "changes with loop_iterations")

    # α is a vector, so the default rule keeps it out of weight decay: decaying it toward 0
    # would pull α_{i,i} = 1 away from the identity. (The Depth-Attention authors decayed it
    # with 0.1; docs/baselines.md §1, §4(e).)

    def __init__(self, config: ModelConfig, options: DenseFormerOptions) -> None:
        super().__init__(config, options)
        self.live = live_outputs(config.num_layers, options.dilation, options.period)
        # Keyed by the 0-based layer the DWA follows: `dwa.{layer_idx}.alpha`.
        self.dwa = nn.ModuleDict({
            str(i - 1): DepthWeightedAverage(dwa_sources(i, options.dilation))
            for i in dwa_positions(config.num_layers, options.period)})

    @classmethod
    def cost(cls, config: ModelConfig, options: DenseFormerOptions) -> MethodCost:
        """§4b: Σ_{i mod p = 0} (⌊i/k⌋ + 1) weights (L(L+3)/2 for k = p = 1); one multiply-add
        per weight and hidden unit, as elementwise weighted sums (no matmul-class FLOPs);
        §4c: the outputs alive at the worst point, (L+1)·d for k = p = 1 (all of h₀, Y_1..Y_L
        meet in the last DWA)."""
        L, d = config.num_layers, config.hidden_size
        weights = sum(len(dwa_sources(i, options.dilation))
                      for i in dwa_positions(L, options.period))
        peak = max(len(s) for s in live_outputs(L, options.dilation, options.period))
        return MethodCost(added_params=weights, added_flops_per_token=float(2 * d * weights),
                          inflight_state_per_token=peak * d)

    def init_stream(self, embeddings: torch.Tensor, ctx: ForwardContext) -> DenseStream:
        return DenseStream(outputs=MappingProxyType({0: embeddings}), x=embeddings)

    def read(self, stream: DenseStream, layer_idx: int, sublayer: Sublayer,
             ctx: ForwardContext) -> torch.Tensor:
        return stream.x

    def write(self, stream: DenseStream, layer_idx: int, sublayer: Sublayer, output: torch.Tensor,
              ctx: ForwardContext) -> DenseStream:
        x = stream.x + output  # inside the block: the ordinary residual add
        if sublayer == "attn":
            return DenseStream(stream.outputs, x)
        i = layer_idx + 1  # x is now Y_i, the raw block output
        outputs = {**stream.outputs, i: x}
        if str(layer_idx) in self.dwa:
            x = self.dwa[str(layer_idx)](outputs)
        # Drop the outputs no later DWA reads (with k = 1 every one is read by the last DWA).
        later = self.live[i + 1] if i < self.num_layers else frozenset()
        kept = {j: y for j, y in outputs.items() if j in later}
        return DenseStream(MappingProxyType(kept), x)

    def final_hidden(self, stream: DenseStream, ctx: ForwardContext) -> torch.Tensor:
        return stream.x
