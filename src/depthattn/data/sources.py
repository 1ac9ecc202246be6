"""Reading a user's corpus: a text file, a folder of .txt files, JSONL, or a `datasets` folder.

Document boundaries matter because the split is by document:
- a folder of `.txt` files (searched recursively): one document per file;
- a `.jsonl` file: one document per line, from the field "text" (configurable);
- a folder written by `datasets.Dataset.save_to_disk` (it has `dataset_info.json` or
  `dataset_dict.json`): one document per row of column "text"; for a DatasetDict all splits
  are read in order, since the split here is ours;
- any other file is read as plain text, with documents separated by blank lines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from depthattn.data.documents import Document
from depthattn.utils.text_files import read_utf8

_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


def _read_text(path: Path) -> str:
    # strict: text decoded with replacement characters would train on garbage without a word
    return read_utf8(path, "corpus file")


def read_text_file(path: Path) -> list[Document]:
    text = _read_text(path).replace("\r\n", "\n")
    parts = [p for p in _BLANK_LINES.split(text) if p.strip()]
    return [Document(name=f"{path.name}:{i}", text=p) for i, p in enumerate(parts)]


def read_text_folder(path: Path) -> list[Document]:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    return [Document(name=str(p.relative_to(path)), text=_read_text(p)) for p in files]


def read_jsonl(path: Path, field: str = "text") -> list[Document]:
    docs = []
    # split on "\n" only, as reading the file line by line would: JSON strings may hold
    # U+2028 and other characters str.splitlines() treats as line ends
    for line_no, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_no} is not valid JSON: {e.msg}") from e
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(
                f"{path}:{line_no} has no string field {field!r} (found keys: {found})")
        docs.append(Document(name=f"{path.name}:{line_no}", text=record[field]))
    return docs


def is_datasets_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists()
                              or (path / "dataset_dict.json").exists())


def read_datasets_folder(path: Path, field: str = "text") -> list[Document]:
    try:
        import datasets  # optional dependency, only for this input kind
    except ImportError as e:
        raise ImportError(
            f"{path} is a Hugging Face `datasets` folder; reading it needs the `datasets` "
            f"package (pip install datasets)") from e
    loaded = datasets.load_from_disk(str(path))
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    docs = []
    for split, dataset in parts:
        if field not in dataset.column_names:
            raise ValueError(
                f"{path} has no column {field!r} (columns: {dataset.column_names})")
        prefix = f"{path.name}/{split}" if split else path.name
        for i, text in enumerate(dataset[field]):
            docs.append(Document(name=f"{prefix}:{i}", text=text or ""))
    return docs


def read_local_source(path: Path, text_field: str = "text") -> list[Document]:
    """Documents of a local corpus (see module doc for how each kind is split into documents)."""
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path} (give a text file, a folder of .txt "
                                f"files, a .jsonl file or a `datasets` folder, or 'default')")
    if is_datasets_folder(path):
        return read_datasets_folder(path, text_field)
    if path.is_dir():
        return read_text_folder(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path, text_field)
    return read_text_file(path)
