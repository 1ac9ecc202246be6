"""Atomic file writes: a file with its final name is always complete.

Each write goes to a sibling temporary name and is moved into place with ``os.replace``, which
is atomic on POSIX and Windows; on any error the temporary file is removed. So "the file
exists" can safely mean "that step is finished", and an interrupted write never replaces a good
file with half of a new one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temp_path(final: str | Path) -> Path:
    """A sibling name for writing ``final``; the pid keeps two concurrent writers apart."""
    final = Path(final)
    return final.with_name(f"{final.name}.tmp-{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to produce the file under a temporary name, then rename it."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_dir(final: str | Path, write: Callable[[Path], None], replace: bool = False) -> Path:
    """Call ``write(staging)`` to fill a hidden sibling folder, then rename it to ``final``, so
    the folder appears complete or not at all. ``replace``: an existing ``final`` is removed
    first (else renaming onto a non-empty folder fails)."""
    final = Path(final)
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
        if replace and final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
