"""LM-head projection fused with cross-entropy, chunk by chunk over tokens.

The reference is ``F.cross_entropy(hidden @ weight.T, targets)``: its float32 logits are
(N, V), 3.3 GB at N = 16k tokens and V = 50304, and autograd keeps them (and their softmax)
alive until backward. Here only one (C, V) chunk of logits exists at a time.

Why gradients are computed in the forward (as Liger-Kernel's fused linear cross-entropy does)
rather than by recomputing each chunk's logits in backward, hand-written or via
``torch.utils.checkpoint``: the gradient of the loss w.r.t. a chunk's logits is
``softmax - onehot``, known as soon as the chunk's logits are. Taking ``grad_hidden`` and
``grad_weight`` right then costs 3 matmuls of size (N, V, D) in all (logits, grad_hidden,
grad_weight) instead of 4 (the recomputation adds one), and what is kept for backward is
``grad_hidden`` (N, D), which replaces the hidden states a recomputing backward would keep, plus
one (V, D) ``grad_weight`` buffer; backward only scales them by the incoming gradient. The price:
the work is done even if backward never runs, so the gradients are skipped when no input
needs them (``torch.no_grad``, eval). Checkpointing would moreover store autograd's per-chunk
intermediates in the recomputation.

Notation: N tokens (all leading dims flattened), D hidden size, V vocabulary, C chunk size.
"""

from __future__ import annotations

import torch

from depthattn.utils.checks import require_positive_int
from depthattn.utils.errors import DepthAttnError

DEFAULT_CHUNK_SIZE = 1024  # tokens: a (1024, 50304) float32 chunk of logits is 206 MB


def _logits_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/fp32 inputs; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_size: int, ignore_index: int, mean: bool, need_hidden_grad: bool,
                need_weight_grad: bool) -> torch.Tensor:
        # hidden (N, D), weight (V, D), targets (N,)
        N = hidden.shape[0]
        acc_dtype = _logits_dtype(hidden.dtype)
        valid = targets != ignore_index  # (N,)
        safe_targets = torch.where(valid, targets, 0)  # ignored rows gather class 0, masked below
        # Each row's weight in the loss: 0 if ignored, else 1 (sum) or 1 / #valid (mean; with no
        # valid token every weight is 0 / 0 = nan, and so is the loss, as F.cross_entropy's).
        row_weight = valid.to(acc_dtype)
        if mean:
            row_weight = row_weight / valid.sum()
        total = hidden.new_zeros((), dtype=acc_dtype)
        grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
        grad_weight = (torch.zeros(weight.shape, dtype=_logits_dtype(weight.dtype),
                                   device=weight.device) if need_weight_grad else None)
        for start in range(0, N, chunk_size):
            rows = slice(start, start + chunk_size)
            h = hidden[rows]  # (C, D)
            t = safe_targets[rows, None]  # (C, 1)
            w = row_weight[rows, None]  # (C, 1)
            # The matmul runs in the input (or autocast) dtype, the softmax math in float32.
            logits = (h @ weight.T).to(acc_dtype)  # (C, V)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (C, 1)
            nll = lse - logits.gather(1, t)  # (C, 1): -log softmax(logits)[target]
            total = total + (nll * w).sum()
            if need_hidden_grad or need_weight_grad:
                # d loss / d logits = w * (softmax - onehot(target)); in place on the chunk's
                # logits, which are not needed any more.
                grad_logits = torch.exp_(logits.sub_(lse))
                grad_logits.scatter_add_(1, t, torch.full_like(lse, -1.0))
                grad_logits = grad_logits.mul_(w).to(h.dtype)  # autocast may lower it further
                if need_hidden_grad:
                    grad_hidden[rows] = grad_logits @ weight  # (C, D)
                if need_weight_grad:
                    grad_weight += grad_logits.T @ h  # (V, D), accumulated in float32
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = (grad_hidden * grad_output).to(hidden_dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk_size: int = DEFAULT_CHUNK_SIZE, ignore_index: int = -100,
                          reduction: str = "mean") -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, targets)`` without materialising the logits.

    Args:
        hidden: (*, D) final hidden states, any float dtype (bf16 under autocast is fine).
        weight: (V, D) the LM head's weight (the embedding matrix when tied).
        targets: (*) integer class ids in [0, V), or ``ignore_index``.
        chunk_size: tokens per chunk; peak extra memory is about chunk_size * V float32.
        ignore_index: targets with this value add nothing to the loss or the gradients.
        reduction: "mean" over non-ignored tokens (nan if there are none), or "sum".

    Returns a scalar in float32 (float64 for float64 inputs). Example::

        h = torch.randn(4, 128, 64, requires_grad=True)
        w = torch.randn(1000, 64, requires_grad=True)
        y = torch.randint(0, 1000, (4, 128))
        chunked_cross_entropy(h, w, y, chunk_size=100).backward()
    """
    require_positive_int("chunk_size", chunk_size)
    if reduction not in ("mean", "sum"):
        raise DepthAttnError(f"reduction ({reduction!r}) must be 'mean' or 'sum'")
    if weight.dim() != 2:
        raise DepthAttnError(f"weight must be (vocab, hidden); got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise DepthAttnError(f"hidden's last dim must be weight's hidden size ({weight.shape[1]}); "
                             f"got hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise DepthAttnError(f"targets shape {tuple(targets.shape)} must be hidden's leading dims "
                             f"{tuple(hidden.shape[:-1])}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise DepthAttnError(f"targets must be integer class ids; got dtype {targets.dtype}")
    grad = torch.is_grad_enabled()
    return _ChunkedCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight,
                                      targets.reshape(-1), chunk_size, ignore_index,
                                      reduction == "mean", grad and hidden.requires_grad,
                                      grad and weight.requires_grad)
