"""Name → cross-layer method, each with its own validated options dataclass.

The one place where method names and options are resolved: ``build_method`` (the model),
``resolve_config`` (a config with its options validated and geometry-dependent defaults filled,
as it is saved), and ``method_options`` (the options dataclass of a config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from depthattn.methods.base import CrossLayerMethod, MethodCost, MethodOptions
from depthattn.methods.baselines.combined import (
    Combined,
    CombinedOptions,
    check_combinable,
    split_parts,
)
from depthattn.model.config import ModelConfig
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.suggest import did_you_mean


@dataclass(frozen=True)
class MethodSpec:
    name: str
    cls: type[CrossLayerMethod]
    options: type[MethodOptions]
    parts: tuple[MethodSpec, ...] = ()  # a combination's two registered methods

    def build(self, config: ModelConfig, options: MethodOptions) -> CrossLayerMethod:
        if self.parts:
            return Combined(config, options, {part.name: part.cls for part in self.parts})
        return self.cls(config, options)

    def cost(self, config: ModelConfig, options: MethodOptions) -> MethodCost:
        """Closed-form accounting (``CrossLayerMethod.cost``)."""
        if self.parts:
            return Combined.combined_cost(config, options,
                                          {part.name: part.cls for part in self.parts})
        return self.cls.cost(config, options)


_METHODS: dict[str, MethodSpec] = {}


def register(name: str, options: type[MethodOptions]) -> Callable[[type], type]:
    """Class decorator: ``@register("depth_attention", options=DepthAttentionOptions)``."""

    def add(cls: type) -> type:
        if name in _METHODS:
            raise DepthAttnError(f"cross-layer method {name!r} is registered twice")
        _METHODS[name] = MethodSpec(name, cls, options)
        cls.name = name
        return cls

    return add


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    """A registered method, or a combination ``a+b`` of two (see combined.py)."""
    if name not in _METHODS and "+" in str(name):
        return _combined_spec(name)
    if name not in _METHODS:
        raise DepthAttnError(f"method ({name!r}) is unknown; allowed: {', '.join(method_names())}, "
                             f"or two of them joined by '+' (e.g. depth_attention+mhc)"
                             f"{did_you_mean(name, method_names())}")
    return _METHODS[name]


def _combined_spec(name: str) -> MethodSpec:
    parts = split_parts(name)
    specs = tuple(get_method(part) for part in parts)
    check_combinable(parts, [s.cls for s in specs])
    return MethodSpec(name, Combined, CombinedOptions, parts=specs)


def resolve_options(name: str, options: Mapping[str, Any], config: ModelConfig) -> MethodOptions:
    """Build the method's options from a plain mapping, fill geometry-dependent defaults and
    validate them; unknown option names are refused with the list of allowed ones."""
    spec = get_method(name)
    if spec.parts:  # each part's options resolved by this function
        return CombinedOptions.of(name, options, config, resolve_options)
    allowed = [f.name for f in dataclasses.fields(spec.options)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) if allowed else "none (this method takes no options)"
        raise DepthAttnError(f"unknown option(s) {', '.join(map(repr, unknown))} for method "
                             f"{name!r}; allowed: {listed}{did_you_mean(unknown[0], allowed)}")
    if config.looped and spec.cls.looped_refusal:
        raise DepthAttnError(f"method {name!r} cannot run a looped model (loop_layers="
                             f"{config.loop_layers}): {spec.cls.looped_refusal}")
    return spec.options(**options).resolved(config)


def method_options(config: ModelConfig) -> MethodOptions:
    """The validated options dataclass of ``config``'s method, geometry-dependent defaults
    filled (e.g. Depth-Attention's stride = L_eff // 2)."""
    return resolve_options(config.method, config.method_options or {}, config)


def resolve_config(config: ModelConfig) -> ModelConfig:
    """``config`` with its method validated and its options resolved, as models hold and save
    it: unknown names, clashing combinations and bad options fail here."""
    resolved = method_options(config).to_dict()
    if resolved == config.method_options:
        return config
    return dataclasses.replace(config, method_options=resolved)


def build_method(config: ModelConfig) -> CrossLayerMethod:
    """The method module of ``config``, its options validated."""
    return get_method(config.method).build(config, method_options(config))
