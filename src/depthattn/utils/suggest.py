"""'Did you mean' for names typed by hand (config keys, overrides, presets, methods)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, allowed: Iterable[str]) -> str | None:
    """The allowed name most like ``name``, or None when none is close (difflib ratio < 0.6)."""
    matches = difflib.get_close_matches(str(name), list(allowed), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """``" (did you mean 'steps'?)"`` for a near miss, else ``""``: appended to an error."""
    match = closest(name, allowed)
    return f" (did you mean {match!r}?)" if match else ""
