"""The `.npy` token shards: one split of a prepared folder read as a single memory-mapped stream,
and the checks and writes the preparations share."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from depthattn.data.prepared import (
    check_split,
    check_tokenizer_hash,
    manifest_path,
    read_manifest,
)
from depthattn.data.tokenizer import check_vocab_fits
from depthattn.utils.atomic import atomic_write
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)


def finished_length(path: Path, dtype: np.dtype) -> int | None:
    """Token count of a finished shard at `path`, or None if it is absent or unreadable (shards
    are written atomically under names that fingerprint their content: one that opens is done)."""
    if not path.exists():
        return None
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        logger.warning("redoing unreadable shard %s (%s)", path.name, e)
        return None
    if array.dtype != dtype or array.ndim != 1:
        logger.warning("redoing shard %s: it holds %s%s, expected 1-D %s",
                       path.name, array.dtype, array.shape, dtype)
        return None
    return int(array.shape[0])


def save_tokens(path: Path, tokens: np.ndarray) -> None:
    """Write a shard atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
            np.save(f, tokens, allow_pickle=False)

    atomic_write(path, write)


class TokenStream:
    """The shards of one split, concatenated in order, memory-mapped (a window may cross a shard
    boundary as it crosses a document boundary: both are EOS-separated)."""

    def __init__(self, path: str | Path, split: str = "train",
                 tokenizer_sha256: str | None = None, model_vocab_size: int | None = None) -> None:
        """Open `split` of the prepared folder (or manifest) at `path`, refusing shards of another
        tokenizer than `tokenizer_sha256` and ids beyond `model_vocab_size`, where given."""
        self.manifest_path = manifest_path(path)
        self.manifest = read_manifest(self.manifest_path)
        if tokenizer_sha256 is not None:
            check_tokenizer_hash(self.manifest, tokenizer_sha256, where=str(self.manifest_path))
        if model_vocab_size is not None:
            check_vocab_fits(self.manifest["tokenizer"]["vocab_size"], model_vocab_size)
        self.split = split
        info = check_split(self.manifest, split)
        root = self.manifest_path.parent
        self.dtype = np.dtype(self.manifest["dtype"])
        self.shards: list[np.ndarray] = []
        for shard in info["shards"]:
            path_i = root / shard["file"]
            if not path_i.exists():
                raise FileNotFoundError(f"{path_i} is listed in {self.manifest_path} but missing; "
                                        f"run prepare again")
            array = np.load(path_i, mmap_mode="r")
            if array.dtype != self.dtype or array.shape != (shard["num_tokens"],):
                raise DepthAttnError(
                    f"{path_i} holds {array.dtype}{array.shape}, but the manifest says "
                    f"{self.dtype}({shard['num_tokens']},); run prepare again")
            self.shards.append(array)
        # offsets[i] = index of shard i's first token in the stream; offsets[-1] = total length.
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.num_tokens = int(self.offsets[-1])
        if self.num_tokens != info["num_tokens"]:
            raise DepthAttnError(f"{self.manifest_path}: {split} shards hold {self.num_tokens} tokens, "
                                 f"the manifest says {info['num_tokens']}")

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def eos_token_id(self) -> int:
        return int(self.manifest["tokenizer"]["eos_token_id"])

    @property
    def tokenizer_path(self) -> Path:
        return self.manifest_path.parent / self.manifest["tokenizer"]["path"]

    def __len__(self) -> int:
        return self.num_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as a new int64 array."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) are outside the {self.split} "
                             f"split's [0, {self.num_tokens})")
        out = np.empty(length, dtype=np.int64)
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        filled = 0
        while filled < length:
            lo = start + filled - int(self.offsets[shard])
            take = min(length - filled, len(self.shards[shard]) - lo)
            out[filled:filled + take] = self.shards[shard][lo:lo + take]
            filled += take
            shard += 1
        return out
