"""The plain Qwen3-style decoder: no cross-layer connection beyond the residual stream."""

from __future__ import annotations

from dataclasses import dataclass

from depthattn.methods.base import CrossLayerMethod, MethodOptions
from depthattn.methods.registry import register


@dataclass(frozen=True)
class VanillaOptions(MethodOptions):
    pass


@register("vanilla", options=VanillaOptions)
class Vanilla(CrossLayerMethod):
    """Both plug-in points keep their defaults."""
