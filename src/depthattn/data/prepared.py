"""Keeping a prepared folder consistent: one tokenizer per folder, no shards of earlier runs.

Shared by the text preparations (the default corpus's and the datatrove engine) and
`import_tokens` (pre-tokenized inputs).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from depthattn.data.manifest import MANIFEST_NAME, read_manifest, write_manifest
from depthattn.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_sha256
from depthattn.utils.atomic import atomic_dir
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"  # a copy of the tokenizer the shards were built with
# Beside a tokenizer trained here: what it was trained on, to tell whether it can be reused.
TRAINING_RECORD = "depthattn_training.json"
SHARD_FILE = re.compile(r"^(train|validation)-\d{5}-[0-9a-f]{16}\.npy$")


def is_prepared(out_dir: Path, request: dict[str, Any]) -> bool:
    """Whether out_dir holds a finished preparation of `request`: its manifest, made for the
    same request, with every shard present and checksummed (a manifest without shard
    checksums is rewritten; its finished shards are kept)."""
    manifest_file = out_dir / MANIFEST_NAME
    if not manifest_file.exists():
        return False
    previous = read_manifest(manifest_file)
    done = previous.get("request") == request and all(
        (out_dir / s["file"]).exists() and "sha256" in s
        for split in previous["splits"].values() for s in split["shards"])
    if done:
        logger.info("%s is already prepared", out_dir)
    return done


def check_not_built_with_other(out_dir: Path, sha256: str, what: str) -> None:
    path = out_dir / MANIFEST_NAME
    if path.exists():
        built_with = read_manifest(path)["tokenizer"]["sha256"]
        if built_with != sha256:
            raise DepthAttnError(
                f"{out_dir} holds shards built with tokenizer sha256 {built_with[:16]}…, but "
                f"{what} has sha256 {sha256[:16]}…; use another out_dir or delete {out_dir}")


def store_given_tokenizer(out_dir: Path, tokenizer):
    """Keep a copy of a user's tokenizer in out_dir, so the folder is self-contained."""
    folder = out_dir / TOKENIZER_DIR
    sha = tokenizer_sha256(tokenizer)
    if folder.exists():
        existing = tokenizer_sha256(load_tokenizer(folder))
        if existing != sha:
            raise DepthAttnError(
                f"{folder} holds a tokenizer with sha256 {existing[:16]}…, but the given one has "
                f"{sha[:16]}…; use another out_dir or delete {out_dir}")
        return
    atomic_dir(folder, lambda staging: save_tokenizer(tokenizer, staging))


def remove_unlisted_shards(out_dir: Path, listed: set[str]) -> None:
    for path in out_dir.iterdir():
        if SHARD_FILE.match(path.name) and path.name not in listed:
            logger.info("removing %s, left from an earlier preparation", path.name)
            path.unlink()


def finish_prepared(out_dir: Path, manifest_file: Path, source: str, tokenizer: dict[str, Any],
                    dtype_name: str, splits: dict[str, dict[str, Any]], request: dict[str, Any],
                    started: float, listed_shards: set[str]) -> Path:
    """The last step of every preparation: the manifest (written atomically, after every shard
    it lists), then the removal of shards it does not list, then one log line.
    ``tokenizer``: sha256, vocab_size and eos_token_id of the folder's tokenizer."""
    write_manifest(manifest_file, {
        "source": source,
        "tokenizer": {"path": TOKENIZER_DIR, **tokenizer},
        "dtype": dtype_name,
        "num_tokens": sum(s["num_tokens"] for s in splits.values()),
        "splits": splits,
        "request": request,
        "seconds": round(time.perf_counter() - started, 1),
    })
    remove_unlisted_shards(out_dir, listed_shards)
    logger.info("prepared %s: %s in %.1f s", out_dir,
                json.dumps({k: v["num_tokens"] for k, v in splits.items()}),
                time.perf_counter() - started)
    return manifest_file
