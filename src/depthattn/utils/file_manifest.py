"""A checksummed folder: ``manifest.json`` lists the size and sha256 of every other file in it.

Written last, into a folder that is then renamed into place (``atomic_dir``), so a folder whose
manifest verifies is exactly the folder that was written: no file missing, none truncated, none
altered since (a flipped bit on disk, a copy that stopped half-way, a hand edit).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from depthattn.utils.atomic import write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "depthattn-files"
VERSION = 1


class CorruptFolder(ValueError):
    """A folder that does not match its manifest; the message names the file and the mismatch."""


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def write_file_manifest(folder: str | Path) -> Path:
    """List every file under ``folder`` (except the manifest) with its size and sha256."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    return write_json_atomic(folder / MANIFEST, {"format": FORMAT, "version": VERSION,
                                                 "files": files})


def read_file_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CorruptFolder(f"{folder} has no {MANIFEST} (it was not written to the end, or "
                            f"by a version that did not checksum its files)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFolder(f"{path} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptFolder(f"{path} is not a {FORMAT} manifest")
    return manifest


def verify_folder(folder: str | Path) -> None:
    """Raise CorruptFolder naming the first file that is missing, unlisted, of another size or
    of another sha256 than the manifest says."""
    folder = Path(folder)
    listed = read_file_manifest(folder)["files"]
    present = {str(p.relative_to(folder)) for p in folder.rglob("*")
               if p.is_file() and p.name != MANIFEST}
    for name in sorted(set(listed) | present):
        path = folder / name
        if name not in listed:
            raise CorruptFolder(f"{path} is not listed in {folder / MANIFEST}")
        if name not in present:
            raise CorruptFolder(f"{path} is missing (listed in {folder / MANIFEST})")
        expected = listed[name]
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CorruptFolder(f"{path} has {size} bytes, the manifest says {expected['bytes']}")
        actual = sha256_file(path)
        if actual != expected["sha256"]:
            raise CorruptFolder(f"{path} has sha256 {actual[:16]}…, the manifest says "
                                f"{expected['sha256'][:16]}…")
