"""Where a run's tokens come from: an existing prepared folder, or prepared now (cached)."""

from __future__ import annotations

from pathlib import Path

from depthattn.data.manifest import manifest_path
from depthattn.train.config import TrainConfig


def resolve_data(config: TrainConfig) -> Path:
    """The manifest of ``config.data``: a prepared folder or manifest is used as it is; a
    source ("default" or a local corpus) is prepared into the cache first (idempotent)."""
    path = Path(config.data)
    if (config.data != "default" and (path / "manifest.json").is_file()) or path.name == "manifest.json":
        return manifest_path(path)
    from depthattn.data import prepare

    return prepare(source=config.data, vocab_size=config.vocab_size, progress=config.progress)
