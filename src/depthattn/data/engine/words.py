"""The words datatrove's MinHash makes its n-grams of: lower case, letters only (datatrove strips
diacritics first, "café" -> "cafe"), early-modern u/v and i/j merged, and spelling keys, so that
a First Folio's "Heauen" and "selfe" meet "heaven" and "self" often enough for editions of one
work to share 3-grams. datatrove's own English word tokenizers need spaCy or NLTK and their
data."""

from __future__ import annotations

import re

from datatrove.utils.word_tokenizers import WordTokenizer

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z]+")
_DOUBLE = re.compile(r"(.)\1")
_OLD_LETTERS = str.maketrans("vj", "ui")  # early modern printing used u/v and i/j alike


def spelling_words(text: str) -> list[str]:
    """Each word by its spelling key: a final e dropped, doubled letters undoubled (Folio
    "selfe"/"self", "shalle"/"shall"); "Heauen" -> "heaun", "heaven" -> "heavn"."""
    return [_DOUBLE.sub(r"\1", w.rstrip("e"))
            for w in _WORD.findall(text.lower().translate(_OLD_LETTERS))]


class SpellingWords(WordTokenizer):
    def __init__(self) -> None:
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return spelling_words(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in _SENTENCE_END.split(text) if s]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"[^.!?]+[.!?]*", text)]
