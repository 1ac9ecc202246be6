"""mHC — manifold-constrained hyper-connections (DeepSeek, arXiv 2512.24880), as the
Depth-Attention authors ran it (hyq718/Depth-Attention `modeling_llama_mhc.py`; docs/baselines.md §6).

n residual streams X ∈ ℝ^{n×d} per token. Before each sublayer (two connectors per layer):

    x̃     = RMSNorm_{nd}(vec X)                         one norm over the flattened n·d vector
    z     = x̃ Φ,   Φ ∈ ℝ^{nd × (n + n + n²)}             split [pre | post | res]
    h_pre = σ(α_pre z_pre + b_pre)                       ∈ ℝⁿ
    h_post= 2σ(α_post z_post + b_post)                   ∈ ℝⁿ
    H_res = Sinkhorn(α_res mat(z_res) + B_res)           ∈ ℝ^{n×n}, doubly stochastic
    u     = Σ_s h_pre[s] X_s                             the branch's own pre-norm reads u
    X'_i  = Σ_j H_res[i, j] X_j + h_post[i] · F(u)

The maps are computed once from X before the sublayer (fp32, then cast to the stream dtype) and
serve both the branch input and the update. Model level: X = n copies of h₀ after the embedding;
before the final norm y = Σ_s softmax(r)_s X_s (r = 0 at init: the mean).

Init (the authors'): b_pre = logit(1/n), b_post = 0, B_res = log of 0.99 on the diagonal and
0.01/(n−1) off it, α = alpha_init, Φ ~ N(0, init_std²), norm gain 1. With α = 0 the model is
exactly the vanilla decoder; with α = alpha_init it is vanilla up to the α-gated dynamic terms.
"""

from __future__ import annotations

import dataclasses
import math
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

RESIDUAL_INIT_DIAGONAL = 0.99  # H_res at init: 0.99 I + 0.01/(n−1) off the diagonal (authors' init)
SINKHORN_FLOOR = 1e-12  # clamp of the exponentials and of every row/column sum


def sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """(…, n, n) logits → doubly stochastic matrices, in fp32 (Sinkhorn–Knopp on exp(logits)).

    Subtract each matrix's max, exponentiate, then ``iters`` × (normalise rows, normalise
    columns). The columns sum to 1 exactly (the last step); the rows converge geometrically, at
    a rate set by how well the matrix mixes: within 1e-7 for well-mixed matrices after 20
    iterations, but near the identity-like init (0.99 on the diagonal) a small perturbation
    leaves the rows ~1e-4 off after 20 (the authors' setting, kept)."""
    matrix = logits.float()
    matrix = matrix - matrix.amax(dim=(-1, -2), keepdim=True)
    matrix = matrix.exp().clamp_min(SINKHORN_FLOOR)
    for _ in range(iters):
        matrix = matrix / matrix.sum(dim=-1, keepdim=True).clamp_min(SINKHORN_FLOOR)
        matrix = matrix / matrix.sum(dim=-2, keepdim=True).clamp_min(SINKHORN_FLOOR)
    return matrix


@dataclass(frozen=True)
class MHCOptions(MethodOptions):
    num_streams: int = 4  # n: expansion rate (paper and authors: 4)
    alpha_init: float = 0.01  # initial gates α_pre, α_post, α_res of the dynamic terms
    sinkhorn_iters: int = 20  # t_max of Sinkhorn–Knopp (paper and authors: 20)

    def resolved(self, config: ModelConfig) -> MHCOptions:
        # n = 1 has no mixing to constrain, and b_pre = logit(1/n) would be infinite
        require_int("mhc option num_streams", self.num_streams, 2)
        alpha = require_number("mhc option alpha_init", self.alpha_init, 0)
        require_int("mhc option sinkhorn_iters", self.sinkhorn_iters, 1)
        return dataclasses.replace(self, alpha_init=alpha)


class ManifoldConnector(nn.Module):
    """The connector of one sublayer: n·d(n² + 2n + 1) + n² + 2n + 3 parameters.

    Storage: Φ is a matrix (decayed like every projection); b_pre, b_post, B_res (flattened) and
    the α's are vectors/scalars, which train/optim.py never decays — unlike the authors, who
    decayed them all (decay pulls B_res toward uniform mixing, docs/baselines.md §6(e))."""

    def __init__(self, hidden_size: int, num_streams: int, alpha_init: float,
                 sinkhorn_iters: int, init_std: float, eps: float) -> None:
        super().__init__()
        n, d = num_streams, hidden_size
        self.num_streams, self.sinkhorn_iters = n, sinkhorn_iters
        self.alpha_init, self.init_std = alpha_init, init_std
        self.norm = RMSNorm(n * d, eps)  # over the flattened n·d vector, not per stream
        self.proj = nn.Parameter(torch.empty(2 * n + n * n, n * d))  # Φᵀ: rows [pre | post | res]
        self.bias_pre = nn.Parameter(torch.empty(n))
        self.bias_post = nn.Parameter(torch.empty(n))
        self.bias_res = nn.Parameter(torch.empty(n * n))  # B_res, row-major
        self.alpha_pre = nn.Parameter(torch.empty(1))  # 1-D: FSDP2 shards no scalars
        self.alpha_post = nn.Parameter(torch.empty(1))
        self.alpha_res = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        n = self.num_streams
        nn.init.normal_(self.proj, std=self.init_std)  # as the model's linears, not zero
        nn.init.constant_(self.bias_pre, -math.log(n - 1))  # logit(1/n) ⇒ h_pre = 1/n
        nn.init.zeros_(self.bias_post)  # ⇒ h_post = 2σ(0) = 1
        off = (1.0 - RESIDUAL_INIT_DIAGONAL) / (n - 1)
        residual = torch.full((n, n), off).fill_diagonal_(RESIDUAL_INIT_DIAGONAL)
        self.bias_res.copy_(residual.log().flatten())  # already doubly stochastic
        for alpha in (self.alpha_pre, self.alpha_post, self.alpha_res):
            nn.init.constant_(alpha, self.alpha_init)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, n, D) → h_pre (B, T, n), h_post (B, T, n), H_res (B, T, n, n), in fp32."""
        B, T, n, D = x.shape
        # Φ in the activation dtype, then fp32 (as the authors); norm statistics in fp32
        z = F.linear(self.norm(x.reshape(B, T, n * D)), self.proj).float()
        pre, post, res = z.split([n, n, n * n], dim=-1)
        h_pre = torch.sigmoid(self.alpha_pre.float() * pre + self.bias_pre.float())
        h_post = 2.0 * torch.sigmoid(self.alpha_post.float() * post + self.bias_post.float())
        res_logits = self.alpha_res.float() * res + self.bias_res.float()
        h_res = sinkhorn(res_logits.view(B, T, n, n), self.sinkhorn_iters)
        return h_pre, h_post, h_res

    def branch_input(self, x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
        """u = Σ_s h_pre[s] X_s: (B, T, D)."""
        return mix_streams(h_pre.unsqueeze(-2), x).squeeze(-2)

    def update(self, x: torch.Tensor, output: torch.Tensor, h_post: torch.Tensor,
               h_res: torch.Tensor) -> torch.Tensor:
        """X'_i = Σ_j H_res[i, j] X_j + h_post[i] · F(u): (B, T, n, D)."""
        return mix_streams(h_res, x) + h_post.to(x.dtype).unsqueeze(-1) * output.unsqueeze(-2)


@register("mhc", options=MHCOptions)
class MHC(StreamConnectors):
    looped_refusal = ("its connectors are per sublayer (2 · num_layers of them) and mix the "
                      "streams of a fixed depth; they are not defined per application")

    def __init__(self, config: ModelConfig, options: MHCOptions) -> None:
        n = options.num_streams
        super().__init__(config, options, n, lambda _: ManifoldConnector(
            config.hidden_size, n, options.alpha_init, options.sinkhorn_iters, config.init_std,
            config.rms_norm_eps))
        self.readout = nn.Parameter(torch.zeros(n))  # r: y = Σ softmax(r)_s X_s
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.readout)  # the connectors reset their own parameters

    @classmethod
    def cost(cls, config: ModelConfig, options: MHCOptions) -> MethodCost:
        """Params 2L·[n·d(n² + 2n + 1) + n² + 2n + 3] + n (docs/baselines.md §6(b)). FLOPs per connector
        (2 per multiply-add; norm, σ and exp not counted): Φ 2·n·d·(n² + 2n), branch input
        2·n·d, stream re-mix 2·n²·d, output write 2·n·d, Sinkhorn iters·4·n² (a sum and a
        division per entry, rows then columns); readout 2·n·d. Matmul-class: Φ, the branch
        input, the re-mix and the readout; the output write and Sinkhorn are elementwise.
        State: n streams of d."""
        n, d, sublayers = options.num_streams, config.hidden_size, 2 * config.num_layers
        params = sublayers * (n * d * (n * n + 2 * n + 1) + n * n + 2 * n + 3) + n
        matmul = 2 * n * d * (n * n + 2 * n) + 2 * n * d + 2 * n * n * d
        per_connector = matmul + 2 * n * d + options.sinkhorn_iters * 4 * n * n
        return MethodCost(added_params=params,
                          added_flops_per_token=float(sublayers * per_connector + 2 * n * d),
                          added_matmul_flops_per_token=float(sublayers * matmul + 2 * n * d),
                          inflight_state_per_token=n * d)

    def final_hidden(self, stream: Streams, ctx: ForwardContext) -> torch.Tensor:
        weights = torch.softmax(self.readout.float(), dim=-1)  # (n,)
        return mix_streams(weights.view(1, 1, 1, -1), stream.x).squeeze(-2)
