"""Training checkpoints: one folder per step, written whole under a temporary name and renamed
into place, so an interruption never leaves a checkpoint that looks finished but is not.

    run_dir/checkpoints/step_0000100/{model.safetensors, config.json, optimizer.pt, state.json}
    run_dir/checkpoints/latest      -> the name of the newest finished checkpoint

(``depthattn.run_dir.RunDir`` reads this layout.)
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depthattn.model.transformer import CausalLM
from depthattn.serialization import load_model, save_model
from depthattn.utils.atomic import atomic_dir, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(checkpoints: Path, step: int, model: CausalLM,
                    optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune old ones."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"

    def write(folder: Path) -> None:
        save_model(model, folder)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state()}, folder / "optimizer.pt")
        write_json_atomic(folder / "state.json", {"step": step, **state})

    # replace: the same step saved again (e.g. the last step of a resumed run)
    final = atomic_dir(checkpoints / name, write, replace=True)
    write_text_atomic(checkpoints / LATEST, name + "\n")
    _prune(checkpoints, keep, protect=name)
    return final


def _prune(checkpoints: Path, keep: int, protect: str) -> None:
    finished = sorted(p for p in checkpoints.glob("step_*") if p.is_dir())
    for old in finished[:-keep]:
        if old.name != protect:
            shutil.rmtree(old)


def load_checkpoint(path: Path, model: CausalLM, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG in place; return state.json."""
    loaded = load_model(path, device=next(model.parameters()).device)
    model.load_state_dict(loaded.state_dict(), strict=True)
    extra = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    state = json.loads((path / "state.json").read_text())
    log.info("resumed from %s (step %d)", path, state["step"])
    return state


__all__ = ["load_checkpoint", "save_checkpoint"]
