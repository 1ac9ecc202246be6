"""Argument checks that name the value and what is allowed, before any work starts."""

from __future__ import annotations

import math
from typing import Any

from depthattn.utils.errors import DepthAttnError


def is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an ``int`` in Python, never a count here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def require_int(name: str, value: Any, low: int = 1, high: int | None = None,
                hint: str = "", high_name: str = "") -> int:
    """``value`` if it is an integer in [low, high] (no upper bound when ``high`` is None);
    else a ValueError "NAME (VALUE) must be an integer >= LOW" (or "in [LOW, HIGH]", the bound
    written "HIGH_NAME=HIGH" when named), followed by ``hint``, e.g. " (1 = every layer)"."""
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f"{high_name}={high}" if high_name else f"{high}"
        allowed = f"an integer in [{low}, {bound}]" if high is not None else f"an integer >= {low}"
        raise DepthAttnError(f"{name} ({value!r}) must be {allowed}{hint}")
    return value


def require_positive_int(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 1; else "NAME (VALUE) must be a positive integer"."""
    if not is_int(value) or value < 1:
        raise DepthAttnError(f"{name} ({value!r}) must be a positive integer")
    return value


def require_number(name: str, value: Any, low: float = 0.0, strict: bool = False) -> float:
    """A finite real number >= low (> low when ``strict``); returned as float."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        relation = ">" if strict else ">="
        kind = "a positive number" if strict and low == 0 else f"a finite number {relation} {low:g}"
        raise DepthAttnError(f"{name} ({value!r}) must be {kind}")
    return float(value)
