"""Batching invariance: a sequence's logits should not depend on how it is fed to the model.

For one sequence, the largest |Δ logit| between the sequence alone (one forward) and
- the same sequence left-padded inside a batch with a longer one,
- chunked prefill through the KV cache,
- decoding token by token through the KV cache,
per method and dtype. Depth-Attention stores mixed values in the cache, so these check that
what the cache holds is what the full forward computed.
"""

from __future__ import annotations

from typing import Any

import torch

from depthattn.model.cache import KVCache
from depthattn.utils.errors import DepthAttnError

CASES = ("left-padded batch", "chunked prefill", "token by token")


@torch.no_grad()
def invariance_errors(model: torch.nn.Module, sequence: torch.Tensor, other: torch.Tensor,
                      chunk: int = 5) -> dict[str, float]:
    """sequence (T,) and a longer ``other`` (T + P,) token ids; max |Δ logit| per case."""
    model.eval()
    T, P = sequence.shape[0], other.shape[0] - sequence.shape[0]
    if P < 1:
        raise DepthAttnError(f"other ({other.shape[0]} tokens) must be longer than the sequence "
                             f"({T}) so that the sequence is padded")
    alone = model(sequence[None]).float()[0]  # (T, V)

    pad = torch.zeros(P, dtype=sequence.dtype, device=sequence.device)
    batch = torch.stack([torch.cat([pad, sequence]), other])
    mask = torch.ones_like(batch)
    mask[0, :P] = 0
    padded = model(batch, attention_mask=mask).float()[0, P:]

    def through_cache(step: int) -> torch.Tensor:
        cache = KVCache.for_model(model, 1, T)
        return torch.cat([model(sequence[None, s:s + step], cache=cache).float()[0]
                          for s in range(0, T, step)])

    results = {"left-padded batch": padded, "chunked prefill": through_cache(chunk),
               "token by token": through_cache(1)}
    return {case: float((logits - alone).abs().max()) for case, logits in results.items()}


def invariance_table(models: dict[str, torch.nn.Module], length: int = 48, extra: int = 7,
                     dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
                     seed: int = 0) -> list[dict[str, Any]]:
    """One row per (method, dtype): max |Δ logit| of every case against the sequence alone.
    Models are copied to each dtype; the token ids are the same for every model."""
    import copy

    rows = []
    for label, model in models.items():
        vocab = model.config.vocab_size
        g = torch.Generator().manual_seed(seed)
        sequence = torch.randint(0, vocab, (length,), generator=g)
        other = torch.randint(0, vocab, (length + extra,), generator=g)
        for dtype in dtypes:
            cast = copy.deepcopy(model).to(dtype)
            device = next(cast.parameters()).device
            errors = invariance_errors(cast, sequence.to(device), other.to(device))
            rows.append({"method": label, "dtype": str(dtype).removeprefix("torch."), **errors})
    return rows


def invariance_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| method | dtype | " + " | ".join(CASES) + " |",
             "|---|---|" + "---:|" * len(CASES)]
    for row in rows:
        lines.append(f"| {row['method']} | {row['dtype']} | "
                     + " | ".join(f"{row[c]:.2e}" for c in CASES) + " |")
    return lines
