"""Small file helpers shared by the data pipeline: the cache directory, hashing, reading.

Every file the pipeline produces is written atomically (``depthattn.utils.atomic``): a file with
its final name is always complete, so "the file exists" can safely mean "that step is finished".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import platformdirs

from depthattn.utils.file_manifest import sha256_file  # noqa: F401 (the pipeline hashes with it)

CACHE_ENV = "DEPTHATTN_CACHE"


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


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete leftovers of interrupted writes (`*.tmp-<pid>`) so they cannot pile up."""
    removed = []
    for path in directory.glob("*.tmp-*"):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed
