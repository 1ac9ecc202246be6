"""Hyper-connections (Zhu et al., 2024, arXiv 2409.19606), the dynamic variant (DHC): the
residual stream is widened to n parallel streams; before every sublayer a connector reads them,
forms the sublayer's input from a weighted sum, and writes the sublayer's output back into every
stream next to a learned n×n re-mixing of the streams (docs/baselines.md §5).

Per sublayer, with streams H ∈ ℝ^{n×d} of one token and H̄ = RMSNorm(H) row by row:

    A(H) = A_static + s_α · tanh(H̄ W_α)     ∈ ℝ^{n×(n+1)}   column 0: A_m, columns 1..n: A_r
    B(H) = B_static + s_β · tanh(H̄ w_β)     ∈ ℝ^{n}
    u    = Σ_s A_m[s] H_s                    (the branch's own pre-norm reads u)
    H'_t = B_t · F(u) + Σ_s A_r[s, t] H_s

The streams are expanded once after the embedding (n copies of h₀) and summed once before the
final norm (HC's readout). Init: W = 0, s_α = s_β = gate_init, A_m = one-hot at the stream
(sublayer index mod n), A_r = I, B = 1 — every stream then equals the vanilla residual.

Deviation from the paper, on purpose: the row norm is an RMSNorm with a learned gain (as in
lucidrains' implementation and the rest of this decoder) rather than a LayerNorm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from depthattn.methods.base import ForwardContext, MethodCost, MethodOptions
from depthattn.methods.baselines.streams import StreamConnectors, Streams, mix_streams
from depthattn.methods.registry import register
from depthattn.model.config import ModelConfig
from depthattn.model.norm import RMSNorm
from depthattn.utils.checks import require_int, require_number


# --- hyper-connections -------------------------------------------------------------------------
@dataclass(frozen=True)
class HyperConnectionsOptions(MethodOptions):
    num_streams: int = 4  # n: expansion rate (HC paper's main setting)
    gate_init: float = 0.01  # initial s_α and s_β, the scales of the dynamic (tanh) terms

    def resolved(self, config: ModelConfig) -> HyperConnectionsOptions:
        require_int("hyper_connections option num_streams", self.num_streams, 1)
        gate = require_number("hyper_connections option gate_init", self.gate_init, 0)
        return dataclasses.replace(self, gate_init=gate)


class HyperConnection(nn.Module):
    """The connector of one sublayer: d(n+3) + n² + 2n + 2 parameters.

    Storage: W_α and w_β are the rows of one projection ``proj`` (n+2, d) (a matrix: weight
    decay applies, as to every projection); A_static, B_static and the gates are vectors and
    scalars, which this repository never decays (train/optim.py)."""

    def __init__(self, hidden_size: int, num_streams: int, input_stream: int, gate_init: float,
                 eps: float) -> None:
        super().__init__()
        n, d = num_streams, hidden_size
        self.num_streams, self.input_stream, self.gate_init = n, input_stream, gate_init
        self.norm = RMSNorm(d, eps)  # H̄: per stream, one gain shared by the n rows
        self.proj = nn.Parameter(torch.empty(n + 2, d))  # rows [W_α (n+1) | w_β (1)]
        self.static_width = nn.Parameter(torch.empty(n * (n + 1)))  # A_static, row-major n×(n+1)
        self.static_depth = nn.Parameter(torch.empty(n))  # B_static
        self.width_gate = nn.Parameter(torch.empty(1))  # s_α (1-D: FSDP2 shards no scalars)
        self.depth_gate = nn.Parameter(torch.empty(1))  # s_β
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """W = 0, s = gate_init, A_m = e_{input_stream}, A_r = I, B = 1 (HC paper's init)."""
        n = self.num_streams
        nn.init.zeros_(self.proj)
        width = torch.zeros(n, n + 1)
        width[self.input_stream, 0] = 1.0
        width[:, 1:] = torch.eye(n)
        self.static_width.copy_(width.flatten())
        nn.init.ones_(self.static_depth)
        nn.init.constant_(self.width_gate, self.gate_init)
        nn.init.constant_(self.depth_gate, self.gate_init)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, n, D) → A_m (B, T, n), A_r (B, T, n, n) [source s, target t], B (B, T, n);
        in fp32."""
        n = self.num_streams
        z = F.linear(self.norm(x), self.proj).float()  # (B, T, n, n+2): row s from stream s
        width = self.static_width.float().view(n, n + 1) \
            + self.width_gate.float() * torch.tanh(z[..., : n + 1])
        depth = self.static_depth.float() + self.depth_gate.float() * torch.tanh(z[..., n + 1])
        return width[..., 0], width[..., 1:], depth

    def branch_input(self, x: torch.Tensor, a_m: torch.Tensor) -> torch.Tensor:
        """u = Σ_s A_m[s] H_s: (B, T, D)."""
        return mix_streams(a_m.unsqueeze(-2), x).squeeze(-2)

    def update(self, x: torch.Tensor, output: torch.Tensor, a_r: torch.Tensor,
               b: torch.Tensor) -> torch.Tensor:
        """H'_t = B_t · F(u) + Σ_s A_r[s, t] H_s: (B, T, n, D)."""
        residual = mix_streams(a_r.transpose(-1, -2), x)
        return residual + b.to(x.dtype).unsqueeze(-1) * output.unsqueeze(-2)


@register("hyper_connections", options=HyperConnectionsOptions)
class HyperConnections(StreamConnectors):
    """Two connectors per layer (attention, MLP), streams expanded once and summed once."""
    looped_refusal = ("its connectors are per sublayer (2 · num_layers of them) and mix the "
                      "streams of a fixed depth; they are not defined per application")

    def __init__(self, config: ModelConfig, options: HyperConnectionsOptions) -> None:
        n = options.num_streams
        super().__init__(config, options, n, lambda k: HyperConnection(
            config.hidden_size, n, input_stream=k % n, gate_init=options.gate_init,
            eps=config.rms_norm_eps))

    @classmethod
    def cost(cls, config: ModelConfig, options: HyperConnectionsOptions) -> MethodCost:
        """Params 2L·[d(n+3) + n² + 2n + 2] (docs/baselines.md §5(b)). FLOPs per sublayer (2 per
        multiply-add; norms and tanh not counted): projection 2·n·d·(n+2), branch input 2·n·d,
        stream re-mix 2·n²·d, output write 2·n·d; readout n·d. Matmul-class: the projection,
        the branch input and the re-mix; the output write and the readout are elementwise.
        State: n streams of d."""
        n, d, sublayers = options.num_streams, config.hidden_size, 2 * config.num_layers
        params = sublayers * (d * (n + 3) + n * n + 2 * n + 2)
        matmul = 2 * n * d * (n + 2) + 2 * n * d + 2 * n * n * d
        per_sublayer = matmul + 2 * n * d
        return MethodCost(added_params=params,
                          added_flops_per_token=float(sublayers * per_sublayer + n * d),
                          added_matmul_flops_per_token=float(sublayers * matmul),
                          inflight_state_per_token=n * d)

    def final_hidden(self, stream: Streams, ctx: ForwardContext) -> torch.Tensor:
        return stream.x.sum(-2)  # HC's readout: the sum of the streams
