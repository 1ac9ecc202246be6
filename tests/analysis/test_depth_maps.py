"""Depth maps: values, not just files. With every key zero the depth softmax is uniform, so the
map is known exactly; on random weights it equals the mean of the captured α; the heatmap and
the run analysis write what they say."""

from __future__ import annotations

import json
import math

import pytest
import torch

from depthattn import capture_depth_weights
from depthattn.analysis.depth_map_plots import plot_depth_map
from depthattn.analysis.depth_maps import depth_map
from tests.conftest import random_ids, tiny_model


def windows(n=3, T=9, seed=0):
    return [(random_ids(2, T, seed=seed + i), None) for i in range(n)]


def test_zero_keys_give_the_uniform_map():
    model = tiny_model(method="depth_attention", method_options={"stride": 1}, seed=1)
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.k_proj.weight.zero_()  # every key 0: every score 0
    maps = depth_map(model, windows())
    L = model.config.num_layers
    assert maps.tokens == 3 * 2 * 9 and list(maps.sources) == list(range(1, L))
    for layer in range(L):
        row = maps.mean_weight[:, layer]  # (H_kv, L + 1)
        if layer == 0:
            assert bool(row.isnan().all()) and bool(maps.entropy[:, 0].isnan().all())
            continue
        n = layer + 1  # stride 1: every earlier layer, and the layer itself
        expected = torch.full((model.config.num_kv_heads, n), 1.0 / n, dtype=torch.float64)
        torch.testing.assert_close(row[:, list(range(layer)) + [L]], expected, rtol=0, atol=1e-6)
        assert bool(row[:, layer:L].isnan().all())
        torch.testing.assert_close(maps.entropy[:, layer],
                                   torch.full_like(maps.entropy[:, layer], math.log(n)),
                                   rtol=0, atol=1e-6)
        assert maps.max_entropy(layer) == pytest.approx(math.log(n))


def test_the_map_is_the_mean_of_the_captured_weights():
    model = tiny_model(method="depth_attention", method_options={"stride": 2}, seed=2).eval()
    batches = windows(n=2)
    maps = depth_map(model, batches)
    with torch.no_grad(), capture_depth_weights(model) as rec:
        for ids, _ in batches:
            model(ids)
    L = model.config.num_layers
    for layer, alpha in rec.weights.items():  # (B, H_kv, T_total, n)
        columns = rec.sources[layer] + [L]
        expected = alpha.double().mean(dim=(0, 2))  # (H_kv, n)
        torch.testing.assert_close(maps.mean_weight[:, layer, columns], expected, rtol=0,
                                   atol=1e-12)
        entropy = -(alpha.double() * alpha.double().log()).sum(-1).mean(dim=(0, 2))
        torch.testing.assert_close(maps.entropy[:, layer], entropy, rtol=0, atol=1e-12)
    # rows sum to 1 (α is a float32 softmax)
    assert float(maps.mean_weight[:, 1:].nansum(-1).sub(1).abs().max()) < 1e-6


def test_a_model_without_depth_attention_is_refused():
    with pytest.raises(ValueError, match="computes no depth weights"):
        depth_map(tiny_model(method="vanilla"), windows(n=1))


def test_heatmap_and_json(tmp_path):
    model = tiny_model(method="depth_attention", seed=3)
    maps = depth_map(model, windows(n=1))
    path = plot_depth_map(maps, tmp_path / "map.png")
    assert path.stat().st_size > 10_000
    data = json.loads(json.dumps(maps.to_dict()))
    L = model.config.num_layers
    assert len(data["mean_weight"]) == L and len(data["mean_weight"][0]) == L + 1
    assert data["columns"][-1] == "self" and data["mean_weight"][0] == [None] * (L + 1)
    assert data["entropy"][0] is None and data["max_entropy"][1] == pytest.approx(math.log(2))
