"""``key=value`` text from command lines and config overrides."""

from __future__ import annotations

import json
from typing import Any

from depthattn.utils.errors import DepthAttnError


def parse_value(raw: str) -> Any:
    """JSON when the text is JSON (numbers, booleans, null, lists, objects), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_key_values(items: list[str], what: str = "option") -> dict[str, Any]:
    """``["stride=2", "name=abc"]`` → ``{"stride": 2, "name": "abc"}``."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DepthAttnError(f"{what} {item!r} must look like key=value")
        options[key.strip()] = parse_value(raw)
    return options
