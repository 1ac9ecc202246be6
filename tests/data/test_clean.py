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
