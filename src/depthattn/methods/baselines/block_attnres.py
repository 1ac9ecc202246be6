"""Block Attention Residuals as Kimi published them (Kimi Team, 2026, arXiv 2603.15031, Fig. 2
and eq. 5–6; docs/baselines.md §7B) — not the variant the Depth-Attention paper compared (attnres.py).

Sublayers are grouped into blocks of ``block_size`` (two per layer). The sources are
b₀ = h₀, the completed block sums b_1..b_{n−1} (b_m = Σ of block m's sublayer outputs, eq. 5, the
embedding never folded in) and the current block's partial sum b_n^{i−1}, absent before the
block's first sublayer (eq. 6). Each sublayer reads

    u = Σ_m α_m v_m,   α = softmax_m(w_lᵀ RMSNorm(v_m))   (keys normed, values raw, eq. 2–4)

with its own zero-initialised pseudo-query w_l and key gain; its output joins the partial sum.
No recency bias. Before the final norm a last aggregator reads [b₀, ..., b_N] (the network's
h_{L+1}); Kimi's text does not show this step (§7B: "not verified"), see ``final_aggregator``.

At init (w = 0) every aggregator is the uniform mean of sources that sum to the vanilla residual,
i.e. the vanilla residual / #sources; the next op is an RMSNorm, so the model equals vanilla up to
the norms' eps.
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
from depthattn.methods.baselines.attnres import DepthAggregator, inverse_rms
from depthattn.methods.registry import register
from depthattn.utils.checks import is_int
from depthattn.utils.errors import DepthAttnError

if TYPE_CHECKING:
    from depthattn.methods.base import ForwardContext
    from depthattn.model.config import ModelConfig

KIMI_NUM_BLOCKS = 8  # "we fix the number of blocks to ≈ 8" (Kimi §5.3)


def default_block_size(num_layers: int) -> int:
    """Sublayers per block for ≈ 8 blocks: 2·⌈L/8⌉ (12 at L = 48, the paper's AttnRes blocks)."""
    return 2 * math.ceil(num_layers / KIMI_NUM_BLOCKS)


def num_blocks(num_layers: int, block_size: int) -> int:
    """N; a last, shorter block takes the remainder (Kimi §3.2)."""
    return math.ceil(num_layers / (block_size // 2))


def sources_per_aggregator(num_layers: int, block_size: int,
                           final_aggregator: bool) -> list[tuple[int, bool]]:
    """(number of sources, whether one is a partial sum) seen by each aggregator, in call
    order: attn and mlp of layer 0, ..., of layer L−1, then the final one if any."""
    per_block, counts, completed = block_size // 2, [], 1  # b₀
    for layer in range(num_layers):
        first = layer % per_block == 0  # the block's first sublayer: no partial yet
        counts += [(completed + (not first), not first), (completed + 1, True)]
        if (layer + 1) % per_block == 0 or layer == num_layers - 1:
            completed += 1
    return counts + ([(completed, False)] if final_aggregator else [])


@dataclass(frozen=True)
class BlockAttnResOptions(MethodOptions):
    block_size: int | None = None  # sublayers per block, even; None → 2·⌈L/8⌉ (≈ 8 blocks)
    final_aggregator: bool = True  # aggregate before the final norm (else: the plain sum)

    def resolved(self, config: ModelConfig) -> BlockAttnResOptions:
        size = default_block_size(config.num_layers) if self.block_size is None \
            else self.block_size
        if not is_int(size) or size < 2 or size % 2:
            raise DepthAttnError(f"block_attnres option block_size ({size!r}) must be an even "
                                 f"integer >= 2 (sublayers per block, two per layer; blocks start "
                                 f"at a layer's attention)")
        if not isinstance(self.final_aggregator, bool):
            raise DepthAttnError(f"block_attnres option final_aggregator "
                                 f"({self.final_aggregator!r}) must be true or false")
        return BlockAttnResOptions(block_size=size, final_aggregator=self.final_aggregator)


@dataclass(frozen=True)
class BlockStream:
    """Per-call residual state; replaced, never mutated (activation checkpointing)."""

    blocks: tuple[torch.Tensor, ...]  # b₀ = h₀, b_1, ..., b_{n−1}: completed, (B, T, D) each
    inv_rms: tuple[torch.Tensor, ...]  # their 1/rms (B, T), cached once when completed
    partial: torch.Tensor | None  # b_n^i, None before the block's first sublayer wrote


@register("block_attnres", options=BlockAttnResOptions)
class BlockAttnRes(CrossLayerMethod):
    """One aggregator (pseudo-query + key gain) before each sublayer (`attn.{l}`, `mlp.{l}`)
    and, by default, one before the final norm (`final`); attention itself is vanilla."""
    looped_refusal = ("its blocks and aggregators are sized by num_layers; a looped model would "
                      "need them per application, which changes with loop_iterations")

    # Weight decay follows the default rule: neither the key gains (RMSNorm gains) nor the
    # pseudo-queries (vectors; Kimi does not say) are decayed.

    def __init__(self, config: ModelConfig, options: BlockAttnResOptions) -> None:
        super().__init__(config, options)
        d, eps = config.hidden_size, config.rms_norm_eps
        self.eps = eps
        self.layers_per_block = options.block_size // 2
        self.attn = nn.ModuleList(DepthAggregator(d, eps) for _ in range(config.num_layers))
        self.mlp = nn.ModuleList(DepthAggregator(d, eps) for _ in range(config.num_layers))
        self.final = DepthAggregator(d, eps) if options.final_aggregator else None

    @classmethod
    def cost(cls, config: ModelConfig, options: BlockAttnResOptions) -> MethodCost:
        """§7B: 2d per aggregator (query, key gain), 2L of them (+1 final) ≈ 2L·2d. FLOPs per
        aggregator and source: dot product (2d, matmul-class) and weighted add (2d,
        elementwise), plus the partial's rms (2d); each completed block's rms once. State: b₀
        and the N blocks, each with its cached 1/rms: (N + 1)·(d + 1), reached when the last
        block completes (9·d + 9 at 3B with N = 8); before, N − 1 blocks and the partial."""
        L, d = config.num_layers, config.hidden_size
        counts = sources_per_aggregator(L, options.block_size, options.final_aggregator)
        N = num_blocks(L, options.block_size)
        flops = sum(4 * d * n + 2 * d * has_partial for n, has_partial in counts)
        flops += 2 * d * (N + 1)  # each completed block's rms (and h₀'s), once
        return MethodCost(added_params=len(counts) * 2 * d, added_flops_per_token=float(flops),
                          added_matmul_flops_per_token=float(sum(2 * d * n for n, _ in counts)),
                          inflight_state_per_token=(N + 1) * (d + 1))

    def init_stream(self, embeddings: torch.Tensor, ctx: ForwardContext) -> BlockStream:
        return BlockStream(blocks=(embeddings,), inv_rms=(inverse_rms(embeddings, self.eps),),
                           partial=None)

    def _ends_block(self, layer_idx: int) -> bool:
        """The block's last layer, or the network's (a last, shorter block: Kimi §3.2)."""
        return (layer_idx + 1) % self.layers_per_block == 0 or layer_idx == self.num_layers - 1

    def _complete(self, stream: BlockStream) -> BlockStream:
        """The partial sum becomes block b_n (Fig. 2: blocks.append(partial_block)). Done at the
        end of a block's last layer rather than, as Fig. 2, at the start of the next one: the
        same sources, and the stream hooks that read them stay stateless."""
        return BlockStream((*stream.blocks, stream.partial),
                           (*stream.inv_rms, inverse_rms(stream.partial, self.eps)), None)

    def read(self, stream: BlockStream, layer_idx: int, sublayer: Sublayer,
             ctx: ForwardContext) -> torch.Tensor:
        aggregator = (self.attn if sublayer == "attn" else self.mlp)[layer_idx]
        if stream.partial is None:  # eq. 6, i = 1: [b₀, ..., b_{n−1}]
            return aggregator([*stream.blocks], [*stream.inv_rms])
        return aggregator([*stream.blocks, stream.partial], [*stream.inv_rms, None])

    def write(self, stream: BlockStream, layer_idx: int, sublayer: Sublayer, output: torch.Tensor,
              ctx: ForwardContext) -> BlockStream:
        partial = output if stream.partial is None else stream.partial + output  # eq. 5
        stream = BlockStream(stream.blocks, stream.inv_rms, partial)
        if sublayer == "mlp" and self._ends_block(layer_idx):
            stream = self._complete(stream)
        return stream

    def final_hidden(self, stream: BlockStream, ctx: ForwardContext) -> torch.Tensor:
        if stream.partial is not None:
            # read before the last layer (Decoder's hidden_states): the open block counts as one
            stream = self._complete(stream)
        if self.final is None:
            return sum(stream.blocks[1:], stream.blocks[0])  # h₀ + Σ b_m: the vanilla residual
        return self.final([*stream.blocks], [*stream.inv_rms])
