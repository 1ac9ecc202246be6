"""'Did you mean' for names typed by hand (config keys, overrides, presets, methods)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """``" (did you mean 'steps'?)"`` for a near miss (difflib ratio >= 0.6), else ``""``:
    appended to an error."""
    matches = difflib.get_close_matches(str(name), list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""
