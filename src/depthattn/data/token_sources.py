"""Pre-tokenized inputs, read memory-mapped: `.npy` and nanoGPT's raw `.bin` (flat ids, documents
separated by the EOS id) and `datasets` token folders (one document per row). Each becomes
`TokenArray`s: the array and the spans of its documents, read once in chunks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from depthattn.data.defaults import TOKEN_DTYPES
from depthattn.data.sources import is_datasets_folder, open_datasets_folder
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)

DEFAULT_BIN_DTYPE = "uint16"  # nanoGPT's train.bin / val.bin
_CHUNK = 1 << 24  # tokens scanned at a time
# llm.c / modded-nanogpt .bin files start with a 256 x int32 header whose first value is one of
# these; read as raw ids, the header would become tokens.
_LLMC_MAGICS = (20240520, 20240801)


@dataclass(frozen=True)
class TokenArray:
    name: str  # the input it came from, e.g. "train.bin" or "corpus/train#0"
    tokens: np.ndarray  # 1-D, memory-mapped
    starts: np.ndarray  # int64: first token of each document
    ends: np.ndarray  # int64: one past its last token; tokens[end] is EOS where `separated`
    separated: np.ndarray  # bool: the document is followed by EOS inside `tokens`


def _check_dtype(dtype: str, where: str) -> np.dtype:
    if dtype not in TOKEN_DTYPES:
        raise DepthAttnError(f"{where}: token dtype {dtype!r} is not supported; allowed: "
                             f"{', '.join(TOKEN_DTYPES)}")
    return np.dtype(dtype)


def open_flat(path: Path, dtype: str | None) -> np.ndarray:
    """The ids of a .npy or .bin file as a read-only memory map (checked, not read)."""
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="r")
        if array.dtype.name not in TOKEN_DTYPES or array.ndim != 1:
            raise DepthAttnError(f"{path} holds {array.dtype}{array.shape}; a token file must be "
                                 f"1-D {' or '.join(TOKEN_DTYPES)}")
        if dtype is not None and dtype != array.dtype.name:
            raise DepthAttnError(f"{path} holds {array.dtype} ids, but --token-dtype is {dtype}")
    elif path.suffix == ".bin":
        np_dtype = _check_dtype(dtype or DEFAULT_BIN_DTYPE, str(path))
        size = path.stat().st_size
        if size % np_dtype.itemsize:
            raise DepthAttnError(f"{path} has {size} bytes, not a multiple of {np_dtype.itemsize} "
                                 f"({np_dtype.name}); is --token-dtype right?")
        if size >= 4 and int(np.fromfile(path, np.int32, 1)[0]) in _LLMC_MAGICS:
            raise DepthAttnError(f"{path} starts with llm.c's .bin header (magic "
                                 f"{int(np.fromfile(path, np.int32, 1)[0])}); only raw id files "
                                 f"(nanoGPT's format) are supported")
        array = np.memmap(path, dtype=np_dtype, mode="r") if size else np.empty(0, np_dtype)
    else:
        raise DepthAttnError(f"{path}: unknown token file type {path.suffix!r}; allowed: .npy, "
                             f".bin, or a `datasets` folder")
    if array.size == 0:
        raise DepthAttnError(f"{path} holds no tokens")
    return array


def scan(tokens: np.ndarray, eos_id: int, bar: tqdm) -> tuple[int, np.ndarray]:
    """(largest id, positions of EOS), reading `tokens` once in chunks."""
    largest, positions = 0, []
    for lo in range(0, len(tokens), _CHUNK):
        chunk = tokens[lo:lo + _CHUNK]
        largest = max(largest, int(chunk.max()))
        positions.append(np.flatnonzero(chunk == eos_id) + lo)
        bar.update(len(chunk))
    return largest, np.concatenate(positions)


def flat_documents(name: str, tokens: np.ndarray, eos: np.ndarray) -> TokenArray:
    """Spans between EOS ids; empty ones (EOS EOS, a leading EOS) hold no document."""
    starts = np.r_[0, eos + 1].astype(np.int64)
    ends = np.r_[eos, len(tokens)].astype(np.int64)
    separated = np.r_[np.ones(len(eos), bool), False]
    keep = ends > starts
    empty = int((~keep[:-1]).sum())  # the span after a trailing EOS is no document
    if empty:
        logger.info("%s: %d empty documents (consecutive EOS ids) are left out", name, empty)
    return TokenArray(name, tokens, starts[keep], ends[keep], separated[keep])


def _integer_list_chunks(path: Path, column: str):
    import pyarrow as pa

    for split, dataset in open_datasets_folder(path, column, "; give the token column with "
                                               "--token-column"):
        col = dataset.data.table.column(column)  # memory-mapped arrow, no copy
        kind = col.type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) \
                or not pa.types.is_integer(kind.value_type):
            raise DepthAttnError(f"{path}: column {column!r} is {kind}, not a list of integer ids")
        for i, chunk in enumerate(col.chunks):
            if chunk.null_count:
                raise DepthAttnError(f"{path}: column {column!r} has {chunk.null_count} null rows")
            yield f"{path.name}{'/' + split if split else ''}#{i}", chunk


def dataset_documents(path: Path, column: str, eos_id: int,
                      bar: tqdm) -> tuple[int, list[TokenArray]]:
    """(largest id, one TokenArray per arrow chunk) of a `datasets` folder; a row = a document."""
    largest, arrays = 0, []
    for name, chunk in _integer_list_chunks(path, column):
        tokens = chunk.values.to_numpy(zero_copy_only=True)
        offsets = chunk.offsets.to_numpy().astype(np.int64)
        starts, ends = offsets[:-1], offsets[1:].copy()
        values = tokens[offsets[0]:offsets[-1]]
        if values.size:
            if values.min() < 0:
                raise DepthAttnError(f"{path}: column {column!r} holds a negative id "
                                     f"({int(values.min())})")
            largest = max(largest, int(values.max()))
        # a row that ends with EOS already has its separator
        separated = np.zeros(len(starts), bool)
        nonempty = ends > starts
        separated[nonempty] = tokens[ends[nonempty] - 1] == eos_id
        ends[separated] -= 1
        keep = ends > starts
        if (~keep).any():
            logger.info("%s: %d empty rows are left out", name, int((~keep).sum()))
        arrays.append(TokenArray(name, tokens, starts[keep], ends[keep], separated[keep]))
        bar.update(len(values))
    return largest, arrays


def check_inputs(paths: list[Path], dtype: str | None) -> None:
    """Fail before any reading: every input exists and is a kind we read."""
    if not paths:
        raise DepthAttnError("no token inputs given")
    if dtype is not None:
        _check_dtype(dtype, "--token-dtype")
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"token input not found: {path}")
        if path.is_dir():
            if not is_datasets_folder(path):
                raise DepthAttnError(f"{path} is a folder but not a `datasets` folder (no "
                                     f"dataset_info.json or dataset_dict.json)")
        else:
            open_flat(path, dtype)
