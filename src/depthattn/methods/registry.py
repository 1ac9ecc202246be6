"""Name → cross-layer method, each with its own validated options dataclass.

The one place where method names and options are resolved: ``ModelConfig`` calls
``resolve_options`` through the hook installed at the bottom of this file, the model calls
``build_method``, the Hugging Face config goes through ``ModelConfig``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from depthattn.methods.base import CrossLayerMethod, MethodOptions
from depthattn.methods.baselines.combined import (
    check_combinable,
    make_combined,
    split_parts,
)
from depthattn.model.config import ModelConfig, install_method_resolver
from depthattn.utils.suggest import did_you_mean


@dataclass(frozen=True)
class MethodSpec:
    name: str
    cls: type[CrossLayerMethod]
    options: type[MethodOptions]


_METHODS: dict[str, MethodSpec] = {}


def register(name: str, options: type[MethodOptions]) -> Callable[[type], type]:
    """Class decorator: ``@register("depth_attention", options=DepthAttentionOptions)``."""

    def add(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(f"cross-layer method {name!r} is registered twice")
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
        raise ValueError(f"method ({name!r}) is unknown; allowed: {', '.join(method_names())}, "
                         f"or two of them joined by '+' (e.g. depth_attention+mhc)"
                         f"{did_you_mean(name, method_names())}")
    return _METHODS[name]


def _combined_spec(name: str) -> MethodSpec:
    if name not in _COMBINED:
        parts = split_parts(name)
        specs = [get_method(part) for part in parts]
        check_combinable(parts, [s.cls for s in specs])
        cls, options = make_combined(name, parts, [s.cls for s in specs], resolve_options)
        _COMBINED[name] = MethodSpec(name, cls, options)
    return _COMBINED[name]


_COMBINED: dict[str, MethodSpec] = {}


def resolve_options(name: str, options: Mapping[str, Any], config: ModelConfig) -> MethodOptions:
    """Build the method's options from a plain mapping, fill geometry-dependent defaults and
    validate them; unknown option names are refused with the list of allowed ones."""
    spec = get_method(name)
    allowed = [f.name for f in dataclasses.fields(spec.options)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) if allowed else "none (this method takes no options)"
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for method "
                         f"{name!r}; allowed: {listed}{did_you_mean(unknown[0], allowed)}")
    if config.looped and spec.cls.looped_refusal:
        raise ValueError(f"method {name!r} cannot run a looped model (loop_layers="
                         f"{config.loop_layers}): {spec.cls.looped_refusal}")
    return spec.options(**options).resolved(config)


def build_method(config: ModelConfig) -> CrossLayerMethod:
    """The method module for a validated config."""
    spec = get_method(config.method)
    return spec.cls(config, config.options())


install_method_resolver(resolve_options)
