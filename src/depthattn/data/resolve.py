"""Where a run's tokens come from: a prepared folder as it is, or a source prepared now (cached)."""

from __future__ import annotations

import logging
from pathlib import Path

from depthattn.data.defaults import DEFAULT_SOURCE
from depthattn.data.manifest import MANIFEST_NAME, manifest_path
from depthattn.data.prepare_text import default_out_dir, prepare

logger = logging.getLogger(__name__)


def _is_prepared(data: str | Path) -> bool:
    path = Path(data)
    return (str(data) != DEFAULT_SOURCE and (path / MANIFEST_NAME).is_file()) \
        or path.name == MANIFEST_NAME


def resolve_data(data: str | Path, vocab_size: int, progress: bool = True) -> Path:
    """The manifest of ``data``: a prepared folder or manifest is used as it is; a source
    ("default" or a local corpus) is prepared into the cache first (idempotent)."""
    if _is_prepared(data):
        return manifest_path(data)
    return prepare(source=str(data), vocab_size=vocab_size, progress=progress)


def find_prepared(data: str | Path, vocab_size: int) -> Path | None:
    """The manifest ``resolve_data`` would return, if it exists already; prepares nothing."""
    if _is_prepared(data):
        found = manifest_path(data)
        return found if found.is_file() else None
    try:
        found = default_out_dir(data, None, vocab_size) / MANIFEST_NAME
    except (FileNotFoundError, ValueError) as error:  # a source that is not on this machine
        logger.debug("no prepared folder for %r: %s", data, error)
        return None
    return found if found.is_file() else None
