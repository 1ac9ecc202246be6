"""Validation loss and perplexity over held-out tokens, with the exact token count."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from depthattn.data.loader import IGNORE_INDEX
from depthattn.utils.checks import require_int
from depthattn.utils.errors import DepthAttnError


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean negative log-likelihood per predicted token (nats)
    perplexity: float
    tokens: int  # predicted tokens the mean is over

    def as_dict(self, prefix: str = "val_") -> dict[str, float | int]:
        return {f"{prefix}loss": self.loss, f"{prefix}ppl": self.perplexity,
                f"{prefix}tokens": self.tokens}


@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        device: torch.device | str = "cpu",
                        autocast_dtype: torch.dtype | None = None,
                        progress: bool = False,
                        loss: Callable[..., torch.Tensor] | None = None,
                        allow_empty: bool = False) -> EvalResult:
    """Sum of token NLLs (float64 across batches) over every target that is not IGNORE_INDEX,
    through the chunked loss: the LM head runs inside the cross-entropy, so no (B, T, vocab)
    logits exist. ``loss``: ``model.loss`` (default) or a compiled version of it.
    ``allow_empty``: batches without a target give loss 0 over 0 tokens instead of an error
    (one rank's share of a validation split smaller than the world)."""
    loss = model.loss if loss is None else loss

    def nll_sum(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss(inputs, targets, ignore_index=IGNORE_INDEX, reduction="sum")

    return _evaluate(model, batches, device, autocast_dtype, progress, "eval", nll_sum,
                     allow_empty)


@torch.no_grad()
def evaluate_perplexity_cached(model: torch.nn.Module,
                               batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                               kv_format: str | None, prefill_chunk: int = 32,
                               device: torch.device | str = "cpu",
                               autocast_dtype: torch.dtype | None = None,
                               progress: bool = False) -> EvalResult:
    """As ``evaluate_perplexity``, but every window goes through a KV cache stored in
    ``kv_format`` (``depthattn.ops.kv_quant``), ``prefill_chunk`` tokens per call: each chunk
    attends to the stored (quantised) keys and values of the earlier chunks and of itself. With
    kv_format None (or the model's dtype) it equals ``evaluate_perplexity``."""
    from depthattn.model.cache import KVCache

    require_int("prefill_chunk", prefill_chunk, 1)

    def nll_sum(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        B, T = inputs.shape
        cache = KVCache.for_model(model, B, T, kv_format=kv_format, dtype=autocast_dtype)
        total = torch.zeros((), dtype=torch.float64, device=inputs.device)
        for start in range(0, T, prefill_chunk):
            chunk = slice(start, start + prefill_chunk)
            logits = model(inputs[:, chunk], cache=cache)  # (B, chunk, vocab): one chunk's
            total += F.cross_entropy(logits.float().flatten(0, 1), targets[:, chunk].flatten(),
                                     ignore_index=IGNORE_INDEX, reduction="sum").double()
        return total

    return _evaluate(model, batches, device, autocast_dtype, progress,
                     f"eval ({kv_format} cache)", nll_sum)


def _evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              device: torch.device | str, autocast_dtype: torch.dtype | None, progress: bool,
              desc: str, nll_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              allow_empty: bool = False) -> EvalResult:
    """The NLL sum over every batch; ``nll_sum(inputs, targets)``: one batch's."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    total, count = 0.0, 0
    total_batches = len(batches) if hasattr(batches, "__len__") else None
    for inputs, targets in tqdm(batches, total=total_batches, desc=desc, disable=not progress,
                                leave=False):
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast:
            total += float(nll_sum(inputs, targets).double())
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    if allow_empty and count == 0:
        return EvalResult(loss=0.0, perplexity=1.0, tokens=0)
    return nll_result(total, count)


def nll_result(total: float, count: int) -> EvalResult:
    """The result of ``count`` predicted tokens whose NLLs sum to ``total``."""
    if count == 0:
        raise DepthAttnError("the validation batches hold no target tokens")
    loss = total / count
    return EvalResult(loss=loss, perplexity=math.exp(loss), tokens=count)
