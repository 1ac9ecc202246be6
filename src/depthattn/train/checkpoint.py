"""Training checkpoints: one folder per step, written whole under a temporary name, fsynced and
renamed into place, with a manifest of every file's size and sha256 written last.

    run_dir/checkpoints/step_0000100/{model.safetensors, config.json, optimizer.pt, state.json,
                                      manifest.json}
    run_dir/checkpoints/latest      -> the name of the newest finished checkpoint (for people;
                                       resuming picks the newest checkpoint that verifies)

Nothing here unpickles code. Weights are safetensors; ``optimizer.pt`` holds only tensors and
plain data (optimizer and scheduler state dicts, RNG states as tensors and integer lists), so
it loads with ``torch.load(weights_only=True)``, which refuses any other object a crafted file
may hold. ``state.json`` holds the step, the token count and the non-finite step counters.

(``depthattn.train.run_dir.RunDir`` reads this layout and verifies the manifests.)
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depthattn.io import CONFIG_NAME, load_model, save_model
from depthattn.model.decoder import CausalLM
from depthattn.utils.atomic import atomic_dir, write_json_atomic, write_text_atomic
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.file_manifest import write_file_manifest

log = logging.getLogger(__name__)

LATEST = "latest"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
# Hidden staging and set-aside folders of atomic_dir: ".step_0000100.tmp-<pid>", ".old-<pid>"
_LEFTOVER = re.compile(r"^\.step_\d+\.(tmp|old)-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def rng_state() -> dict[str, Any]:
    """Every RNG as tensors and plain lists (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [version, list(mt), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(checkpoints: Path, step: int, model: CausalLM,
                    optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune old ones."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)

    def write(folder: Path) -> None:
        save_model(model, folder)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state()}, folder / OPTIMIZER_FILE)
        write_json_atomic(folder / STATE_FILE, {"step": step, **state})
        write_file_manifest(folder)  # last: a folder with a verifying manifest is complete

    # replace: the same step saved again (e.g. the last step of a resumed run)
    final = atomic_dir(checkpoints / name, write, replace=True)
    write_text_atomic(checkpoints / LATEST, name + "\n")
    prune_checkpoints(checkpoints, keep, protect=name)
    return final


def prune_checkpoints(checkpoints: Path, keep: int, protect: str) -> None:
    """Keep the newest ``keep`` checkpoints, and remove what killed writers left behind."""
    finished = sorted((p for p in checkpoints.glob("step_*") if p.is_dir()),
                      key=lambda p: p.name)
    for old in finished[:-keep]:
        if old.name != protect:
            shutil.rmtree(old)
    for path in checkpoints.iterdir():
        match = _LEFTOVER.match(path.name)
        if match and int(match.group(2)) != os.getpid() and path.is_dir():
            log.info("removing %s, left by an interrupted checkpoint write", path)
            shutil.rmtree(path, ignore_errors=True)


def model_differences(path: Path, model: CausalLM) -> list[str]:
    """The ModelConfig fields in which checkpoint ``path`` differs from ``model``."""
    saved = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    saved.pop("format", None)
    ours = model.config.to_dict()
    return [f"{key} {saved.get(key)!r} (this run: {ours.get(key)!r})"
            for key in sorted(set(saved) | set(ours)) if saved.get(key) != ours.get(key)]


def load_training_state(path: Path) -> dict[str, Any]:
    """optimizer.pt without unpickling anything but tensors and plain data."""
    file = path / OPTIMIZER_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message goes on about how to load the file anyway; keep only what it found
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f"it refers to {found.group(1)}" if found else str(error).strip().splitlines()[-1]
        raise DepthAttnError(f"{file} holds objects other than tensors and plain data ({what}); "
                         f"refusing to unpickle it, since such a file can run code when "
                         f"loaded") from None


def load_checkpoint(path: Path, model: CausalLM, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG in place; return state.json. A checkpoint
    of another model (method, size, vocabulary, ...) is refused with the differences named."""
    differences = model_differences(path, model)
    if differences:
        raise DepthAttnError(f"checkpoint {path} holds another model than this run trains: "
                         f"{'; '.join(differences)}")
    extra = load_training_state(path)
    loaded = load_model(path, device=next(model.parameters()).device)
    model.load_state_dict(loaded.state_dict(), strict=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    log.info("resumed from %s (step %d)", path, state["step"])
    return state


__all__ = ["checkpoint_name", "load_checkpoint", "load_training_state", "model_differences",
           "prune_checkpoints", "save_checkpoint"]
