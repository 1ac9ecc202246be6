"""The depth mix with a hand-written backward that recomputes the weights (PyTorch, any device).

Forward keeps one log-sum-exp per token and kv head, not the n+1 weights: backward recomputes
α_j = exp(a_j − lse) from the sources, which are alive anyway (the depth stash and the
attention that reads them hold them). This is the math of the Triton kernel, in PyTorch.

Backward, per token and kv head, with o = ṽ_l and do = ∂L/∂o (docs/method.md §3, eq. 3–4):
    ∂L/∂ṽ_j = α_j · do                            (v_l for the layer itself)
    ∂L/∂α_j = do · ṽ_j
    ∂L/∂a_j = α_j (∂L/∂α_j − Σ_i α_i ∂L/∂α_i)     (softmax)
    ∂L/∂k_j = ∂L/∂a_j · q̄ / √d,    ∂L/∂q̄ = Σ_j ∂L/∂a_j · k_j / √d
    ∂L/∂q_h = ∂L/∂q̄ / G for each of the G query heads of the group (the group mean)
"""

from __future__ import annotations

import math

import torch

from depthattn.ops.depth_mix.unstacked import group_mean_query, source_scores


class _DepthMixRecompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, num_sources: int, *kv: torch.Tensor) -> torch.Tensor:
        keys, values = kv[:num_sources + 1], kv[num_sources + 1:]
        compute = torch.promote_types(q.dtype, torch.float32)
        scale = 1.0 / math.sqrt(q.shape[-1])
        q_bar = group_mean_query(q, keys[-1].shape[1], compute)
        scores = source_scores(q_bar, keys, scale)
        lse = torch.logsumexp(torch.stack(scores, dim=-1), dim=-1)  # (B, H_kv, T)
        mixed = torch.zeros_like(q_bar)
        for a, v in zip(scores, values):
            mixed.add_(torch.exp(a - lse).unsqueeze(-1) * v)
        ctx.num_sources, ctx.scale = num_sources, scale
        ctx.save_for_backward(q, lse, *kv)
        return mixed.to(values[-1].dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, lse, *kv = ctx.saved_tensors
        n1 = ctx.num_sources + 1
        keys, values = kv[:n1], kv[n1:]
        compute = lse.dtype
        H_kv = keys[-1].shape[1]
        q_bar = group_mean_query(q, H_kv, compute)
        grad_out = grad_out.to(compute)
        alphas = [torch.exp(a - lse) for a in source_scores(q_bar, keys, ctx.scale)]
        grad_alphas = [(grad_out * v.to(compute)).sum(-1) for v in values]
        weighted = sum(a * g for a, g in zip(alphas, grad_alphas))  # Σ_i α_i ∂L/∂α_i
        grad_scores = [a * (g - weighted) * ctx.scale for a, g in zip(alphas, grad_alphas)]
        grad_keys = [(s.unsqueeze(-1) * q_bar).to(k.dtype) for s, k in zip(grad_scores, keys)]
        grad_values = [(a.unsqueeze(-1) * grad_out).to(v.dtype) for a, v in zip(alphas, values)]
        grad_q_bar = sum(s.unsqueeze(-1) * k.to(compute) for s, k in zip(grad_scores, keys))
        G = q.shape[1] // H_kv
        grad_q = (grad_q_bar / G).unsqueeze(2).expand(-1, -1, G, -1, -1).flatten(1, 2)
        return grad_q.to(q.dtype), None, *grad_keys, *grad_values


def depth_mix_recompute(q: torch.Tensor, source_keys: list[torch.Tensor],
                        source_values: list[torch.Tensor], key: torch.Tensor,
                        value: torch.Tensor) -> torch.Tensor:
    """ṽ_l (B, H_kv, T, d); shapes as in ``depth_mix_reference``."""
    return _DepthMixRecompute.apply(q, len(source_keys), *source_keys, key, *source_values, value)
