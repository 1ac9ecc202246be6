"""Keeping a prepared folder consistent: one tokenizer per folder, no shards of earlier runs.

Shared by `prepare` (text) and `import_tokens` (pre-tokenized inputs).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from depthattn.data.manifest import MANIFEST_NAME, read_manifest
from depthattn.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_sha256
from depthattn.utils.atomic import atomic_dir

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"  # a copy of the tokenizer the shards were built with
SHARD_FILE = re.compile(r"^(train|validation)-\d{5}-[0-9a-f]{16}\.npy$")


def check_not_built_with_other(out_dir: Path, sha256: str, what: str) -> None:
    path = out_dir / MANIFEST_NAME
    if path.exists():
        built_with = read_manifest(path)["tokenizer"]["sha256"]
        if built_with != sha256:
            raise ValueError(
                f"{out_dir} holds shards built with tokenizer sha256 {built_with[:16]}…, but "
                f"{what} has sha256 {sha256[:16]}…; use another out_dir or delete {out_dir}")


def store_given_tokenizer(out_dir: Path, tokenizer):
    """Keep a copy of a user's tokenizer in out_dir, so the folder is self-contained."""
    folder = out_dir / TOKENIZER_DIR
    sha = tokenizer_sha256(tokenizer)
    if folder.exists():
        existing = tokenizer_sha256(load_tokenizer(folder))
        if existing != sha:
            raise ValueError(
                f"{folder} holds a tokenizer with sha256 {existing[:16]}…, but the given one has "
                f"{sha[:16]}…; use another out_dir or delete {out_dir}")
        return
    atomic_dir(folder, lambda staging: save_tokenizer(tokenizer, staging))


def remove_unlisted_shards(out_dir: Path, listed: set[str]) -> None:
    for path in out_dir.iterdir():
        if SHARD_FILE.match(path.name) and path.name not in listed:
            logger.info("removing %s, left from an earlier preparation", path.name)
            path.unlink()
