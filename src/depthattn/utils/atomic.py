"""Atomic, durable file writes: a file with its final name is always complete.

Write to a sibling temporary name, ``fsync`` it, ``os.replace`` it into place, ``fsync`` the
parent directory; on any error the temporary file is removed. Without the fsyncs the kernel may
persist the rename before the data, leaving a complete-looking name over empty blocks.
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


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make the renames and creations inside a directory durable (POSIX; a no-op on Windows,
    which cannot open directories and commits renames with the file system journal)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root`` (files first, then their folders)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to produce the file under a temporary name, fsync it, rename it."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_dir(final: str | Path, write: Callable[[Path], None], replace: bool = False) -> Path:
    """Call ``write(staging)`` to fill a hidden sibling folder, fsync everything in it, then
    rename it to ``final``, so the folder appears complete or not at all. ``replace``: an
    existing ``final`` is removed first (else renaming onto a non-empty folder fails)."""
    final = Path(final)
    staging = staging_dir(final)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return commit_dir(staging, final, replace)


def staging_dir(final: str | Path, owner: int | None = None) -> Path:
    """A new, empty hidden sibling of ``final`` to fill before ``commit_dir``; ``owner``: the
    pid in its name (default this process; a distributed checkpoint uses rank 0's, so that every
    rank writes into the same folder)."""
    final = Path(final)
    staging = final.with_name(f".{final.name}.tmp-{owner or os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def commit_dir(staging: str | Path, final: str | Path, replace: bool = False) -> Path:
    """fsync everything in ``staging``, then rename it to ``final`` (see ``atomic_dir``)."""
    staging, final = Path(staging), Path(final)
    aside = final.with_name(f".{final.name}.old-{os.getpid()}")
    try:
        fsync_tree(staging)
        # The old folder is moved aside, not deleted, before the new one takes its name: an
        # interruption between the two renames leaves both copies on disk, and a failed
        # rename puts the old one back.
        if replace and final.exists():
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if aside.exists() and not final.exists():
            os.replace(aside, final)
        raise
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)
    return final


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
