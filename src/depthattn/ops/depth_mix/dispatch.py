"""Pick a depth-mix implementation by name, falling back to the reference."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from depthattn.ops.depth_mix.reference import depth_mix_reference
from depthattn.ops.depth_mix.unstacked import depth_mix_unstacked

DepthMixFn = Callable[..., torch.Tensor]

# name -> implementation; every one is tested against the reference, forward and backward.
IMPLEMENTATIONS: dict[str, DepthMixFn] = {"reference": depth_mix_reference,
                                          "unstacked": depth_mix_unstacked}
DEFAULT = "unstacked"  # same math, no stacked copies kept for backward

_ENV_VAR = "DEPTHATTN_DEPTH_MIX"
_forced: str | None = None


def set_depth_mix_impl(name: str | None) -> None:
    """Force one implementation for every later call (None: automatic choice).
    The environment variable DEPTHATTN_DEPTH_MIX does the same."""
    global _forced
    if name is not None and name not in IMPLEMENTATIONS:
        raise ValueError(f"depth-mix implementation ({name!r}) is unknown; allowed: "
                         f"{', '.join(IMPLEMENTATIONS)}")
    _forced = name


def select_depth_mix(q: torch.Tensor) -> DepthMixFn:
    name = _forced or os.environ.get(_ENV_VAR) or DEFAULT
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"{_ENV_VAR} ({name!r}) names no depth-mix implementation; allowed: "
                         f"{', '.join(IMPLEMENTATIONS)}")
    return IMPLEMENTATIONS[name]


def depth_mix(q: torch.Tensor, source_keys: list[torch.Tensor],
              source_values: list[torch.Tensor], key: torch.Tensor,
              value: torch.Tensor) -> torch.Tensor:
    """ṽ_l from the sources' keys and mixed values; see ``depth_mix_reference`` for shapes."""
    return select_depth_mix(q)(q, source_keys, source_values, key, value)
