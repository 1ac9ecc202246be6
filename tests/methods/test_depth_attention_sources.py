"""Depth sources S(l) (docs/method.md §2) against a brute-force transcription and hand-written lists."""

from __future__ import annotations

import itertools

import pytest

from depthattn.methods.depth_attention import depth_sources


def brute_force_sources(layer: int, stride: int, window: int) -> list[int]:
    """S(l) = { j : 0 ≤ j < l and (j mod s == 0 or j ≥ l − w) }, written out set by set."""
    strided = set(range(0, layer, stride))  # j ≡ 0 (mod s), j < l
    recent = set(range(max(0, layer - window), layer))  # l − w ≤ j < l
    return sorted(strided | recent)


@pytest.mark.parametrize(
    "num_layers, stride, window",
    [
        (8, 1, 0),   # s = 1: every earlier layer
        (8, 2, 0),
        (8, 3, 0),
        (8, 4, 0),   # s = L / 2, the default
        (8, 8, 0),   # s = L: only layer 0
        (8, 13, 0),  # s > L: only layer 0
        (8, 4, 1),
        (8, 4, 2),
        (8, 3, 5),
        (8, 8, 8),   # window covering everything
        (12, 5, 3),
        (1, 1, 0),
        (48, 24, 0),  # the paper's 3B setting
    ],
)
def test_matches_brute_force(num_layers, stride, window):
    for layer in range(num_layers):
        got = depth_sources(layer, stride, window)
        assert list(got) == brute_force_sources(layer, stride, window), (layer, stride, window)


@pytest.mark.parametrize("stride, window", list(itertools.product([1, 2, 3, 7, 100], [0, 1, 4])))
def test_layer_zero_has_no_sources_and_layer_zero_is_always_a_source(stride, window):
    assert list(depth_sources(0, stride, window)) == []
    for layer in range(1, 10):
        got = list(depth_sources(layer, stride, window))
        assert got[0] == 0
        assert got == sorted(set(got)), "ascending, no duplicates"
        assert all(0 <= j < layer for j in got)


def test_stride_one_is_every_earlier_layer():
    for layer in range(10):
        assert list(depth_sources(layer, 1, 0)) == list(range(layer))


@pytest.mark.parametrize("stride", [8, 9, 1000])
def test_stride_at_least_num_layers_leaves_only_layer_zero(stride):
    for layer in range(1, 8):
        assert list(depth_sources(layer, stride, 0)) == [0]


@pytest.mark.parametrize(
    "layer, stride, window, expected",
    [
        (5, 4, 0, [0, 4]),
        (4, 4, 0, [0]),
        (7, 4, 0, [0, 4]),
        (7, 4, 2, [0, 4, 5, 6]),
        (6, 4, 2, [0, 4, 5]),
        (3, 4, 2, [0, 1, 2]),
        (7, 2, 0, [0, 2, 4, 6]),
        (7, 3, 1, [0, 3, 6]),
        (7, 3, 2, [0, 3, 5, 6]),
        (1, 4, 0, [0]),
        (1, 1, 3, [0]),
        (0, 4, 2, []),
        (11, 5, 3, [0, 5, 8, 9, 10]),
    ],
)
def test_hand_written_lists(layer, stride, window, expected):
    assert list(depth_sources(layer, stride, window)) == expected
