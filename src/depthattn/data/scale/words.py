"""The words datatrove's MinHash makes its n-grams of: those of `depthattn.data.dedup` (lower
case, letters only, early-modern u/v and i/j merged, spelling keys), so that both engines see
the same 3-grams (on ASCII text: datatrove strips diacritics first, "café" -> "cafe", where the
local engine's words stop at the "é"). datatrove's own English word tokenizers need spaCy or
NLTK and their data."""

from __future__ import annotations

import re

from datatrove.utils.word_tokenizers import WordTokenizer

from depthattn.data.dedup import spelling_words

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class SpellingWords(WordTokenizer):
    def __init__(self) -> None:
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return spelling_words(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in _SENTENCE_END.split(text) if s]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"[^.!?]+[.!?]*", text)]
