"""Depth maps of a Depth-Attention model over held-out text: how much weight each layer's depth
softmax puts on each of its sources and on itself, per kv-head group, and how spread out that
softmax is (its entropy).

    maps = depth_map(model, batches)          # over the validation windows
    maps.mean_weight                          # (H_kv, L, L + 1): [g, l, j] = E[α_j] at layer l
    maps.entropy                              # (H_kv, L): E[-Σ α log α] in nats

Column j < L is source layer j, column L is the layer itself; entries of a layer that does not
read j (or of a layer without sources) are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from depthattn.analysis.depth_weights import capture_depth_weights
from depthattn.utils.errors import DepthAttnError


@dataclass(frozen=True)
class DepthMap:
    mean_weight: torch.Tensor  # (H_kv, L, L + 1) float64, NaN where not a source
    entropy: torch.Tensor  # (H_kv, L) float64, NaN for layers without sources
    sources: dict[int, list[int]]  # S(l) of every mixing layer
    tokens: int  # positions averaged over

    @property
    def num_layers(self) -> int:
        return self.mean_weight.shape[1]

    def max_entropy(self, layer: int) -> float:
        """log(|S(l)| + 1): the entropy of a uniform depth softmax at that layer."""
        return math.log(len(self.sources[layer]) + 1)

    def to_dict(self) -> dict[str, Any]:
        def clean(t: torch.Tensor) -> list:
            return [[None if math.isnan(x) else x for x in row] for row in t.tolist()]

        layers = range(self.num_layers)
        return {
            "tokens": self.tokens,
            "layers": self.num_layers,
            "columns": [f"L{j}" for j in layers] + ["self"],
            "sources": {str(l): s for l, s in self.sources.items()},
            "mean_weight": clean(self.mean_weight.mean(0)),
            "mean_weight_per_kv_head": [clean(m) for m in self.mean_weight],
            "entropy": [None if math.isnan(x) else x for x in self.entropy.mean(0).tolist()],
            "entropy_per_kv_head": clean(self.entropy),
            "max_entropy": [self.max_entropy(l) if l in self.sources else None for l in layers],
        }


@torch.no_grad()
def depth_map(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              device: torch.device | str = "cpu") -> DepthMap:
    """Mean depth weights and entropies over every position of ``batches`` (inputs only)."""
    config = model.config
    # a looped model's rows and columns are its applications (docs/method.md §7): L = L_eff
    # an MLA model mixes its one latent entry per token: one map (H_kv = 1)
    L, H_kv = config.num_applications, config.kv_cache_shape[0]
    weight_sum = torch.zeros(H_kv, L, L + 1, dtype=torch.float64)
    entropy_sum = torch.zeros(H_kv, L, dtype=torch.float64)
    sources: dict[int, list[int]] = {}
    tokens = 0
    was_training = model.training
    model.eval()
    for inputs, _ in batches:
        with capture_depth_weights(model) as recorder:
            model(inputs.to(device))
        for layer, alpha in recorder.weights.items():  # (B, H_kv, T, |S| + 1)
            alpha = alpha.double()
            sources[layer] = recorder.sources[layer]
            columns = recorder.sources[layer] + [L]
            weight_sum[:, layer, columns] += alpha.sum(dim=(0, 2)).cpu()
            plogp = torch.where(alpha > 0, alpha * alpha.log(), torch.zeros_like(alpha))
            entropy_sum[:, layer] -= plogp.sum(-1).sum(dim=(0, 2)).cpu()
        tokens += inputs.numel()
    model.train(was_training)
    if not sources:
        raise DepthAttnError(f"method {config.method!r} computes no depth weights: depth maps need "
                             f"a model with Depth-Attention")
    if tokens == 0:
        raise DepthAttnError("the batches hold no tokens")
    mean = weight_sum / tokens
    entropy = entropy_sum / tokens
    mask = torch.ones(L, L + 1, dtype=torch.bool)  # True where not a source
    for layer, s in sources.items():
        mask[layer, s + [L]] = False
    mean[:, mask] = math.nan
    entropy[:, [l for l in range(L) if l not in sources]] = math.nan
    return DepthMap(mean, entropy, dict(sorted(sources.items())), tokens)
