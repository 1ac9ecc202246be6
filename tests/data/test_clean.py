from __future__ import annotations

from depthattn.data.clean import clean_text, normalize_whitespace, strip_gutenberg

BOILERPLATE = """The Project Gutenberg EBook of Hamlet
This eBook is for the use of anyone anywhere at no cost
*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

ACT I.
Who's there?

*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***
End of the Project Gutenberg EBook; licence text follows.
"""


def test_strip_gutenberg_keeps_only_text_between_markers():
    assert clean_text(BOILERPLATE) == "ACT I.\nWho's there?"


def test_strip_gutenberg_leaves_unmarked_text_alone():
    text = "ACT I.\n*** not a marker\nWho's there?"
    assert strip_gutenberg(text) == text


def test_normalize_whitespace():
    assert normalize_whitespace("\r\n\r\nA  \r\nB\n\n\n\n\n\nC \n\n") == "A\nB\n\n\nC"


def _reference_clean(text: str) -> str:
    """The cleaning rules as plain regular expressions over the whole text (what clean_text
    computes with cheaper steps)."""
    import re

    start = re.search(r"^\*{3,}\s*START OF.*$", text, re.MULTILINE | re.IGNORECASE)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*{3,}\s*END OF.*$", text, re.MULTILINE | re.IGNORECASE)
    if end:
        text = text[:end.start()]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{4,}", "\n\n\n", text).strip()


def test_clean_text_equals_the_plain_regular_expressions():
    import random

    rng = random.Random(0)
    pieces = [" ", "\t", "\n", "\r", "\r\n", "a", "b c", "*", "***", "*** START OF x",
              "\n*** END OF y\n", "**** start of z", "  \n", "\t \n", "\n\n\n\n\n", "\u00a0\n"]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        assert clean_text(text) == _reference_clean(text), repr(text)
