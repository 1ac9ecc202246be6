"""Two methods at once, e.g. ``depth_attention+mhc``: one that works inside attention and one
that works on the residual stream, each keeping its own hooks. Pairs whose hooks overlap (both
change the values, or both the stream) are refused, naming the hooks they share.

Options are given per part: ``method_options={"depth_attention": {"stride": 2}, "mhc": {}}``;
parameters live under ``model.cross_layer.<part>.*``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from depthattn.methods.base import (
    CrossLayerMethod,
    ForwardContext,
    MethodCost,
    MethodOptions,
    Sublayer,
)
from depthattn.model.config import ModelConfig
from depthattn.utils.errors import DepthAttnError

# (part name, options mapping, config) -> that part's validated options (the registry's)
ResolveOptions = Callable[[str, Mapping[str, Any], ModelConfig], MethodOptions]

SEPARATOR = "+"
IN_ATTENTION = ("mix_values", "mix_entries")
ON_STREAM = ("init_stream", "read", "write", "final_hidden")


def hooks_used(cls: type[CrossLayerMethod]) -> set[str]:
    """The plug-in points a method overrides."""
    return {hook for hook in IN_ATTENTION + ON_STREAM
            if getattr(cls, hook) is not getattr(CrossLayerMethod, hook)}


def split_parts(name: str) -> list[str]:
    return name.split(SEPARATOR)


def check_combinable(parts: list[str], classes: list[type[CrossLayerMethod]]) -> None:
    if len(parts) != 2 or len(set(parts)) != 2:
        raise DepthAttnError(f"method ({SEPARATOR.join(parts)!r}) combines two different methods, "
                             f"e.g. 'depth_attention+mhc'")
    shared = hooks_used(classes[0]) & hooks_used(classes[1])
    if shared:
        raise DepthAttnError(f"methods {parts[0]!r} and {parts[1]!r} cannot be combined: both use "
                             f"{', '.join(sorted(shared))}; combine a method that works inside "
                             f"attention with one that works on the residual stream")


@dataclass(frozen=True)
class CombinedOptions(MethodOptions):
    """The options of a combination: each part's own validated options, by part name."""

    parts: Mapping[str, MethodOptions] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, options: Mapping[str, Any], config: ModelConfig,
           resolve_options: ResolveOptions) -> CombinedOptions:
        """``options``: {part: that part's options mapping}, e.g. ``{"depth_attention":
        {"stride": 2}}``; a part left out gets its defaults."""
        parts = split_parts(name)
        unknown = sorted(set(options) - set(parts))
        if unknown:
            raise DepthAttnError(f"unknown option(s) {', '.join(map(repr, unknown))} for method "
                                 f"{name!r}; allowed: {', '.join(parts)}")
        resolved = {}
        for part in parts:
            given = options.get(part, {})
            if dataclasses.is_dataclass(given):
                given = dataclasses.asdict(given)
            if not isinstance(given, Mapping):
                raise DepthAttnError(f"options of {part!r} in a combined method must be a mapping, "
                                     f"got {given!r}")
            resolved[part] = resolve_options(part, given, config)
        return cls(parts=resolved)

    def to_dict(self) -> dict[str, Any]:
        return {part: options.to_dict() for part, options in self.parts.items()}


class Combined(CrossLayerMethod):
    """Delegates each hook to the part that defines it (the vanilla default otherwise)."""

    def __init__(self, config: ModelConfig, options: CombinedOptions,
                 part_classes: Mapping[str, type[CrossLayerMethod]]) -> None:
        """``part_classes``: each part's registered class, in the order of the name."""
        super().__init__(config, options)
        self.name = SEPARATOR.join(part_classes)
        self.parts = nn.ModuleDict({name: cls(config, options.parts[name])
                                    for name, cls in part_classes.items()})
        self._owner = {hook: name for name, cls in part_classes.items()
                       for hook in hooks_used(cls)}
        self.reads_context_activations = any(cls.reads_context_activations
                                             for cls in part_classes.values())
        self.needs_whole_heads = any(part.needs_whole_heads for part in self.parts.values())

    def decays(self, name: str, param: nn.Parameter) -> bool:
        """Each part decides for its own parameters (``parts.<part>.<name>``)."""
        _, part, rest = name.split(".", 2)
        return self.parts[part].decays(rest, param)

    @staticmethod
    def combined_cost(config: ModelConfig, options: CombinedOptions,
                      part_classes: Mapping[str, type[CrossLayerMethod]]) -> MethodCost:
        costs = [c.cost(config, options.parts[name]) for name, c in part_classes.items()]
        return MethodCost(
            added_params=sum(c.added_params for c in costs),
            added_flops_per_token=sum(c.added_flops_per_token for c in costs),
            added_matmul_flops_per_token=sum(c.added_matmul_flops_per_token for c in costs),
            # both in-flight states describe the same token and include its residual, d: once,
            # plus what each part keeps beyond it (the stream part's streams, the attention
            # part's stash outside the cache: Depth-Attention's MLA values rule has some)
            inflight_state_per_token=config.hidden_size + sum(
                c.inflight_state_per_token - config.hidden_size for c in costs),
            persistent_state_per_token=sum(c.persistent_state_per_token for c in costs))

    def _call(self, hook: str, *args: Any) -> Any:
        owner = self._owner.get(hook)
        if owner is None:
            return getattr(CrossLayerMethod, hook)(self, *args)
        return getattr(self.parts[owner], hook)(*args)

    def mix_values(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   ctx: ForwardContext) -> torch.Tensor:
        return self._call("mix_values", layer_idx, q, k, v, ctx)

    def mix_entries(self, layer_idx: int, depth_query: Callable[[], torch.Tensor],
                    entry: torch.Tensor, ctx: ForwardContext
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._call("mix_entries", layer_idx, depth_query, entry, ctx)

    def init_stream(self, embeddings: torch.Tensor, ctx: ForwardContext) -> Any:
        return self._call("init_stream", embeddings, ctx)

    def read(self, stream: Any, layer_idx: int, sublayer: Sublayer,
             ctx: ForwardContext) -> torch.Tensor:
        return self._call("read", stream, layer_idx, sublayer, ctx)

    def write(self, stream: Any, layer_idx: int, sublayer: Sublayer, output: torch.Tensor,
              ctx: ForwardContext) -> Any:
        return self._call("write", stream, layer_idx, sublayer, output, ctx)

    def final_hidden(self, stream: Any, ctx: ForwardContext) -> torch.Tensor:
        return self._call("final_hidden", stream, ctx)

    def extra_repr(self) -> str:
        return ""
