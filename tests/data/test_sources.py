"""Reading a user's corpus into documents: each input kind, and how it splits into documents."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from depthattn.data.sources import (
    iter_datasets_folder,
    iter_local_source,
    iter_text_file,
)


def read_local_source(path, text_field="text"):
    return list(iter_local_source(path, text_field))


def test_folder_gives_one_document_per_txt_file(corpus_dir):
    (corpus_dir / "sub").mkdir()
    (corpus_dir / "sub" / "z.txt").write_text("nested", encoding="utf-8")
    (corpus_dir / "notes.md").write_text("not text corpus", encoding="utf-8")
    docs = read_local_source(corpus_dir)
    assert len(docs) == 13
    assert docs[-1].name == "sub/z.txt" and docs[-1].text == "nested"


def test_text_file_splits_on_blank_lines(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("One\nline two\n\n\nThree\n  \nFour\n", encoding="utf-8")
    assert [d.text for d in read_local_source(path)] == ["One\nline two", "Three", "Four\n"]


def test_jsonl_reads_the_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate("abc"))
                    + "\n\n", encoding="utf-8")
    assert [d.text for d in read_local_source(path)] == ["a", "b", "c"]


def test_jsonl_without_the_field_names_the_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"docs.jsonl:2 has no string field 'text'.*body"):
        read_local_source(path)


def test_jsonl_with_broken_json_names_the_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"docs.jsonl:2 is not valid JSON"):
        read_local_source(path)


def test_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["first doc", "second doc"], "n": [1, 2]}) \
        .save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"content": ["a", "b"]}),
        "test": datasets.Dataset.from_dict({"content": ["c"]}),
    }).save_to_disk(str(tmp_path / "dsd"))
    assert [d.text for d in read_local_source(tmp_path / "ds")] == ["first doc", "second doc"]
    assert [d.text for d in read_local_source(tmp_path / "dsd", "content")] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"no column 'text' \(columns: \['content'\]\)"):
        read_local_source(tmp_path / "dsd")


def test_a_folder_reads_its_jsonl_files_line_by_line(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("a text file", encoding="utf-8")
    (tmp_path / "b" / "c.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    docs = read_local_source(tmp_path)
    assert [(d.name, d.text) for d in docs] == [("a.txt", "a text file"), ("b/c.jsonl:1", "one"),
                                                ("b/c.jsonl:3", "two")]


@pytest.mark.parametrize("count", [1, 3, 4])
def test_datasets_folder_shards_keep_their_row_numbers(tmp_path, count):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(10)]}),
        "test": datasets.Dataset.from_dict({"text": ["x0", "x1"]}),
    }).save_to_disk(str(tmp_path / "dsd"))
    whole = [(d.name, d.text) for d in iter_datasets_folder(tmp_path / "dsd")]
    shared = [(d.name, d.text) for index in range(count)
              for d in iter_datasets_folder(tmp_path / "dsd", shard=(index, count))]
    assert sorted(shared) == sorted(whole) and len(shared) == 12
    assert ("dsd/train:7", "t7") in shared


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus not found: .*missing"):
        read_local_source(tmp_path / "missing")


_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


@given(st.text(alphabet="ab \t\n\r", max_size=40))
def test_text_files_stream_into_the_documents_of_a_whole_read(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("t") / "book.txt"
    path.write_bytes(text.encode())
    parts = [p for p in _BLANK_LINES.split(text.replace("\r\n", "\n")) if p.strip()]
    assert [d.text for d in iter_text_file(path)] == parts
