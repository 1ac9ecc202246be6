"""The layout of a training run directory, in one place:

    RUN/train_config.json     the resolved TrainConfig (written first: "this is a run")
    RUN/model_config.json     the resolved ModelConfig
    RUN/metrics.jsonl         one JSON record per logged step and evaluation
    RUN/summary.json          written last: the run finished
    RUN/model/                the final model (config.json + model.safetensors)
    RUN/checkpoints/step_N/   resumable checkpoints, each with a manifest of its files' sha256;
                              checkpoints/latest names the newest one written
    RUN/zeroshot/             zero-shot results (zeroshot.json, zeroshot.md)
    RUN/tensorboard/          TensorBoard events
    RUN/.lock                 while a process trains the run: its pid, host and start time
                              (train/lock.py)

and where a run's data and tokenizer are: the prepared folder its ``data`` field names (or
the cache folder ``depthattn prepare`` makes for that source), whose manifest names the
tokenizer.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthattn.utils.file_manifest import CorruptFolder, verify_folder

log = logging.getLogger(__name__)

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json")
_CHECKPOINT = re.compile(r"^step_(\d+)$")


def _entry(name: str) -> property:
    """A path inside the run directory, as a read-only attribute."""
    return property(lambda run: run.path / name, doc=f"RUN/{name}")


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # --- the layout (the module docstring says what each holds) ----------------------------
    config_file = _entry("train_config.json")
    model_config_file = _entry("model_config.json")
    metrics_file = _entry("metrics.jsonl")
    summary_file = _entry("summary.json")
    model_dir = _entry("model")
    checkpoints_dir = _entry("checkpoints")
    zeroshot_dir = _entry("zeroshot")
    tensorboard_dir = _entry("tensorboard")
    lock_file = _entry(".lock")

    # --- what is there ---------------------------------------------------------------------
    def is_run(self) -> bool:
        return self.config_file.is_file()

    def is_finished(self) -> bool:
        return self.summary_file.is_file()

    def read_config(self) -> dict[str, Any]:
        """The saved TrainConfig fields as a dict."""
        return json.loads(self.config_file.read_text())

    def checkpoints(self) -> list[Path]:
        """The checkpoint folders, newest (highest step) first, whether or not they verify."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [p for p in self.checkpoints_dir.iterdir()
                 if p.is_dir() and _CHECKPOINT.match(p.name)]
        return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)), reverse=True)

    def find_checkpoint(self) -> tuple[Path | None, list[str]]:
        """The newest checkpoint whose manifest verifies (every file present, of the listed
        size and sha256), and why each newer one was passed over."""
        skipped = []
        for path in self.checkpoints():
            try:
                verify_folder(path)
            except CorruptFolder as problem:
                skipped.append(f"{path.name}: {problem}")
                continue
            return path, skipped
        return None, skipped

    def latest_checkpoint(self) -> Path | None:
        """The newest complete, intact checkpoint; a corrupt or partial one is reported by name
        (logged) and skipped in favour of the one before it."""
        path, skipped = self.find_checkpoint()
        for reason in skipped:
            log.warning("skipping corrupt checkpoint %s", reason)
        return path

    def model_path(self) -> Path | None:
        """The final model, else the newest checkpoint, else None."""
        if (self.model_dir / "config.json").is_file():
            return self.model_dir
        return self.latest_checkpoint()

    # --- data and tokenizer ----------------------------------------------------------------
    def data_manifest(self, prepare: bool = False) -> Path | None:
        """The manifest of the run's prepared data; with ``prepare``, prepared now if missing
        (the same tokens: preparation is deterministic), else None when not on this machine."""
        # imported here: the data package loads transformers' tokenizers, which reading a run's
        # model (serialization, `import depthattn`) must not pay for
        from depthattn.data.prepare_text import find_prepared, resolve_data
        from depthattn.data.tokenizer import DEFAULT_VOCAB_SIZE

        if not self.is_run():
            return None
        config = self.read_config()
        if "data" not in config:
            return None
        vocab_size = config.get("vocab_size", DEFAULT_VOCAB_SIZE)
        if prepare:
            return resolve_data(config["data"], vocab_size, progress=config.get("progress", True))
        return find_prepared(config["data"], vocab_size)


def find_tokenizer(path: str | Path, prepare: bool = False) -> Path | None:
    """The tokenizer that goes with ``path``: tokenizer files in the folder itself (Hugging Face
    layout), in its ``tokenizer/`` or ``model/tokenizer/``, else, for a training run, the one
    its prepared data's manifest names (``prepare``: prepare that data if it is missing)."""
    path = Path(path)
    for folder in (path, path / "tokenizer", path / "model" / "tokenizer"):
        if any((folder / marker).is_file() for marker in TOKENIZER_MARKERS):
            return folder
    manifest = RunDir(path).data_manifest(prepare=prepare)
    if manifest is None or not manifest.is_file():
        return None
    tokenizer = json.loads(manifest.read_text()).get("tokenizer", {}).get("path")
    found = manifest.parent / tokenizer if tokenizer else None
    return found if found is not None and found.exists() else None
