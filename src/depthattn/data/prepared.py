"""The prepared folder training reads: its layout, the manifest, the checks made when reading it,
and the steps every preparation shares (one tokenizer per folder, no shards of earlier runs).

    manifest.json                      written last: its presence means "finished"
    tokenizer/tokenizer.json, ...      the tokenizer that produced the ids
    train-00000-<fingerprint>.npy      flat token ids, documents separated by EOS (validation-...)

Every file is written atomically (``depthattn.utils.atomic``): one with its final name is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import platformdirs

from depthattn.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_sha256
from depthattn.utils.atomic import atomic_dir, write_json_atomic
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.file_manifest import sha256_file

logger = logging.getLogger(__name__)

CACHE_ENV = "DEPTHATTN_CACHE"
MANIFEST_NAME = "manifest.json"
FORMAT = "depthattn-tokens"
VERSION = 1
PACK_VERSION = 1  # in text preparations' requests: bump when the shards of the same inputs change
MAX_LISTED_DOCUMENTS = 10_000  # a split lists its document names up to this many
TOKENIZER_DIR = "tokenizer"  # a copy of the tokenizer the shards were built with
# Beside a tokenizer trained here: what it was trained on, to tell whether it can be reused.
TRAINING_RECORD = "depthattn_training.json"
SHARD_FILE = re.compile(r"^(train|validation)-\d{5}-[0-9a-f]{16}\.npy$")


def cache_dir() -> Path:
    """The root of depthattn's cache: `$DEPTHATTN_CACHE` if set, else the user cache directory."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("depthattn"))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def remove_stale_temp_files(directory: Path) -> None:
    """Delete leftovers of interrupted writes (`*.tmp-<pid>`) so they cannot pile up."""
    for path in directory.glob("*.tmp-*"):
        if path.is_file():
            path.unlink()
            logger.info("removed %s, left by an interrupted run", path.name)


def manifest_path(path: str | Path) -> Path:
    """Accept either a prepared folder or its manifest.json."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = manifest_path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no prepared data at {path}: run `depthattn prepare` first (a folder without "
            f"{MANIFEST_NAME} was never finished)")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DepthAttnError(
            f"{path} is not a {FORMAT} v{VERSION} manifest (format={manifest.get('format')!r}, "
            f"version={manifest.get('version')!r}); prepare the data again")
    return manifest


def check_tokenizer_hash(manifest: dict[str, Any], tokenizer_sha256: str, where: str = "") -> None:
    """Refuse shards whose ids come from another tokenizer than the one the model will use."""
    built_with = manifest["tokenizer"]["sha256"]
    if built_with != tokenizer_sha256:
        raise DepthAttnError(
            f"the shards{f' in {where}' if where else ''} were built with tokenizer sha256 "
            f"{built_with[:16]}…, but the tokenizer in use has sha256 {tokenizer_sha256[:16]}…; "
            f"prepare the data again with this tokenizer (or use the manifest's tokenizer, "
            f"{manifest['tokenizer']['path']!r})")


def check_split(manifest: dict[str, Any], split: str) -> dict[str, Any]:
    if split not in manifest["splits"]:
        raise DepthAttnError(
            f"unknown split {split!r}; this manifest has {sorted(manifest['splits'])}")
    return manifest["splits"][split]


def verify_prepared(path: str | Path) -> None:
    """Before training: raise naming the first shard (size, sha256) or tokenizer that does not
    match the manifest; a damaged or swapped shard would otherwise train on the wrong tokens."""
    where = manifest_path(path)
    manifest, root = read_manifest(where), where.parent
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            path = root / shard["file"]
            if not path.is_file():
                raise FileNotFoundError(f"{path} is listed in {where} ({split} split) but "
                                        f"missing; run `depthattn prepare` again")
            size = path.stat().st_size
            if "bytes" in shard and size != shard["bytes"]:
                raise DepthAttnError(f"{path} has {size} bytes, but {where} says {shard['bytes']}; "
                                     f"the shard is damaged or from another preparation: run "
                                     f"`depthattn prepare` again")
            if "sha256" in shard:
                actual = sha256_file(path)
                if actual != shard["sha256"]:
                    raise DepthAttnError(
                        f"{path} has sha256 {actual[:16]}…, but {where} says "
                        f"{shard['sha256'][:16]}…; the shard is damaged or from another "
                        f"preparation: run `depthattn prepare` again")
    folder = root / manifest["tokenizer"]["path"]
    if not folder.exists():
        raise FileNotFoundError(f"the tokenizer {folder} named in {where} is missing; run "
                                f"`depthattn prepare` again")
    actual = tokenizer_sha256(load_tokenizer(folder))
    expected = manifest["tokenizer"]["sha256"]
    if actual != expected:
        raise DepthAttnError(f"the tokenizer in {folder} (sha256 {actual[:16]}…) is not the one the "
                             f"shards in {root} were built with (sha256 {expected[:16]}…, per "
                             f"{where}); restore that tokenizer or prepare the data again with "
                             f"this one")


def is_prepared(out_dir: Path, request: dict[str, Any]) -> bool:
    """Whether out_dir holds a finished preparation of `request`, every shard present and
    checksummed (a manifest without shard checksums is rewritten; its shards are kept)."""
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


def has_trained_tokenizer(out_dir: Path, record: dict[str, Any], detail: str = "") -> bool:
    """Whether out_dir holds a tokenizer trained here for `record` (its `TRAINING_RECORD`);
    one made for other inputs is refused."""
    folder = out_dir / TOKENIZER_DIR
    if not folder.exists():
        return False
    stored = read_json(folder / TRAINING_RECORD) if (folder / TRAINING_RECORD).exists() else None
    if stored != record:
        raise DepthAttnError(f"{folder} holds a tokenizer made for other inputs "
                             f"({stored or 'not trained here'}); {detail}use another out_dir or "
                             f"delete {out_dir}")
    return True


def save_trained_tokenizer(folder: Path, tokenizer, record: dict[str, Any],
                           replace: bool = False) -> None:
    """The tokenizer and its training record, as one folder that appears complete or not at all."""
    def write(staging: Path) -> None:
        save_tokenizer(tokenizer, staging)
        write_json_atomic(staging / TRAINING_RECORD, record)

    atomic_dir(folder, write, replace=replace)


def finish_prepared(out_dir: Path, manifest_file: Path, source: str, tokenizer: dict[str, Any],
                    dtype_name: str, splits: dict[str, dict[str, Any]], request: dict[str, Any],
                    started: float, listed_shards: set[str]) -> Path:
    """The last step of every preparation: the manifest (after every shard it lists), then the
    removal of shards it does not list. ``tokenizer``: sha256, vocab_size, eos_token_id."""
    write_json_atomic(manifest_file, {
        "format": FORMAT, "version": VERSION,
        "source": source,
        "tokenizer": {"path": TOKENIZER_DIR, **tokenizer},
        "dtype": dtype_name,
        "num_tokens": sum(s["num_tokens"] for s in splits.values()),
        "splits": splits,
        "request": request,
        "seconds": round(time.perf_counter() - started, 1),
    })
    for path in out_dir.iterdir():
        if SHARD_FILE.match(path.name) and path.name not in listed_shards:
            logger.info("removing %s, left from an earlier preparation", path.name)
            path.unlink()
    logger.info("prepared %s: %s in %.1f s", out_dir,
                json.dumps({k: v["num_tokens"] for k, v in splits.items()}),
                time.perf_counter() - started)
    return manifest_file
