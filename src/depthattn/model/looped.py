"""Looped (recurrent-depth) decoders, docs/method.md §7: the order in which layers are applied, and how an
iteration of the looped block reads the prelude's output (input injection).

A looped ``ModelConfig`` has a prelude of p layers, a block of k layers applied r times with
shared weights and a coda of c = num_layers − p − k layers. Applications run in that order and
are numbered e = 0 .. L_eff − 1, L_eff = p + k·r + c (``ModelConfig.num_applications``). The
cross-layer hooks, the depth stash and the KV cache are indexed by e; the weights by the
application's distinct layer. A config that is not looped has L_eff = num_layers, e = layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from depthattn.model.config import ModelConfig


@dataclass(frozen=True)
class Application:
    """One application of a decoder layer in the forward pass."""

    index: int  # e, in the order the layers run: the hooks', depth stash's and KV cache's index
    layer: int  # i, the distinct layer whose weights run (an index into Decoder.layers)
    iteration: int | None = None  # t = 0 .. r − 1 in the looped block; None in prelude and coda

    @property
    def starts_iteration(self) -> bool:
        """The looped block's first layer: the prelude's output is injected before it runs."""
        return self.iteration is not None and self.layer == self.first_looped_layer

    first_looped_layer: int = 0  # p


def applications(config: ModelConfig, loop_iterations: int | None = None) -> list[Application]:
    """prelude, then the looped block r times, then the coda: every application in order.
    ``loop_iterations``: r for one call (None: the configured r)."""
    p, k = config.prelude_layers, config.loop_layers
    r = config.loop_iterations if loop_iterations is None else loop_iterations
    order: list[tuple[int, int | None]] = [(i, None) for i in range(p)]
    order += [(p + j, t) for t in range(r) for j in range(k)]
    order += [(i, None) for i in range(p + k, config.num_layers)]
    return [Application(e, i, t, first_looped_layer=p) for e, (i, t) in enumerate(order)]


class LoopInjection(nn.Module):
    """At the start of every iteration, the state s and the prelude's output e make the new state:

    - ``none``: s (iteration 0 reads e itself: s = e there);
    - ``add``: s + e;
    - ``concat``: W [s; e], W a bias-free (D, 2D) matrix, Huginn's adapter (arXiv 2502.05171).

    W starts at [I, 0] rather than Huginn's random normal: a fresh model then computes exactly
    what ``none`` computes (an r = 1 model equals the plain model of the same weights), and the
    zero half still receives gradients, since e is not zero. A random W would hand the first
    looped layer a random projection of its input at initialisation.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.mode = config.loop_injection
        D = config.hidden_size
        if self.mode == "concat":
            # a parameter, not an nn.Linear: the model's generic N(0, σ²) init leaves it alone
            self.weight = nn.Parameter(torch.empty(D, 2 * D))
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.mode == "concat":
            D = self.weight.shape[0]
            self.weight.zero_()
            self.weight[:, :D].copy_(torch.eye(D))

    def forward(self, state: torch.Tensor, prelude_output: torch.Tensor) -> torch.Tensor:
        """state, prelude_output: (B, T, D) → the (B, T, D) state the iteration starts from."""
        if self.mode == "add":
            return state + prelude_output
        if self.mode == "concat":
            return F.linear(torch.cat([state, prelude_output], dim=-1), self.weight)
        return state

    def extra_repr(self) -> str:
        return f"mode={self.mode}"
