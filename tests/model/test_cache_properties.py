"""Property: cached decoding equals the full forward for any chunking of the sequence and any
left padding of the batch's rows, for vanilla and Depth-Attention (docs/method.md §4)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthattn import KVCache

ATOL = 1e-5


def chunkings(total: int):
    """Random positive chunk sizes summing to ``total``."""
    return st.lists(st.integers(1, total), min_size=1, max_size=total).map(
        lambda cuts: _sizes(sorted({c for c in cuts if c < total}), total))


def _sizes(cuts: list[int], total: int) -> list[int]:
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:])]


MODELS = {}


def model_for(method: str, stride: int, window: int):
    from tests.conftest import tiny_model

    key = (method, stride, window)
    if key not in MODELS:
        options = {"stride": stride, "recent_window": window} if method != "vanilla" else {}
        MODELS[key] = tiny_model(seed=7, method=method, method_options=options)
    return MODELS[key]


@settings(max_examples=25)
@given(data=st.data(), method=st.sampled_from(["vanilla", "depth_attention"]),
       stride=st.integers(1, 6), window=st.integers(0, 3), length=st.integers(2, 14),
       pads=st.lists(st.integers(0, 5), min_size=1, max_size=3))
def test_cached_chunks_equal_the_full_forward(data, method, stride, window, length, pads):
    model = model_for(method, stride, window)
    T = length + max(pads)
    gen = torch.Generator().manual_seed(length * 31 + sum(pads))
    ids = torch.randint(0, 128, (len(pads), T), generator=gen)
    mask = torch.ones(len(pads), T, dtype=torch.long)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0  # left padding of that row
    sizes = data.draw(chunkings(T), label="chunk sizes")
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = KVCache.for_model(model, len(pads), T)
        pieces, start = [], 0
        for size in sizes:
            pieces.append(model(ids[:, start:start + size],
                                attention_mask=mask[:, :start + size], cache=cache))
            start += size
    cached = torch.cat(pieces, dim=1)
    real = mask.bool()  # padded positions predict nothing; compare the real ones
    torch.testing.assert_close(cached[real], full[real], rtol=0, atol=ATOL)


@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_a_padded_row_equals_the_row_alone(method):
    model = model_for(method, 2, 1)
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([torch.full((1, 3), 5), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    with torch.no_grad():
        alone = model(ids)
        cache = KVCache.for_model(model, 1, 12)
        chunked = torch.cat([model(padded[:, :5], attention_mask=mask[:, :5], cache=cache),
                             model(padded[:, 5:], attention_mask=mask, cache=cache)], dim=1)
    torch.testing.assert_close(chunked[:, 3:], alone, rtol=0, atol=ATOL)
