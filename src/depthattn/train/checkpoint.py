"""Training checkpoints, one folder per step, in two layouts; both are written under a hidden
temporary name, fsynced, given a manifest of every file's size and sha256 last, then renamed
into place, so an interrupted write is never taken as the newest checkpoint (docs/reliability.md).

A single process writes its checkpoint whole:

    run_dir/checkpoints/step_0000100/{model.safetensors, config.json, optimizer.pt, state.json,
                                      manifest.json}
    run_dir/checkpoints/latest      -> the name of the newest finished checkpoint (for people;
                                       resuming picks the newest checkpoint that verifies)

A torchrun job writes it through ``torch.distributed.checkpoint`` (DCP), every rank its own
shards, and loads it on any number of ranks (DCP reshards) or in one plain process:

    run_dir/checkpoints/step_0000100/
        dcp/            .metadata + one __<rank>_0.distcp per rank: model and AdamW state,
                        keyed by parameter name (get_state_dict), whatever the world size
        config.json     the ModelConfig (resume refuses another model by name)
        trainer.pt      scheduler state and rank 0's RNG state
        state.json, manifest.json

All ranks write into one staging folder (named after rank 0's pid); rank 0 writes its files
and the manifest once every shard is on disk. ``async_save``: a background thread writes the
shards (over its own gloo group) while training goes on; the folder is finished at the next
checkpoint or at the end of training.

Nothing here unpickles code. Weights are safetensors; ``optimizer.pt`` and ``trainer.pt`` hold
only tensors and plain data, loaded with ``torch.load(weights_only=True)``, which refuses any
other object a crafted file may hold. ``state.json`` holds the step, the token counts, the world
size and the non-finite step counters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from depthattn.io import CONFIG_NAME, SHARDS_DIR, load_model, save_model
from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.train.distributed import Distributed
from depthattn.utils.atomic import (
    atomic_dir,
    commit_dir,
    staging_dir,
    write_json_atomic,
    write_text_atomic,
)
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.file_manifest import write_file_manifest

log = logging.getLogger(__name__)

LATEST = "latest"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_FILE = "trainer.pt"
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


def check_same_model(path: Path, model: CausalLM) -> None:
    """Refuse checkpoint ``path`` of another model (method, size, vocabulary, ...), naming every
    ModelConfig field that differs."""
    saved = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    saved.pop("format", None)
    # fields added to ModelConfig after the checkpoint was written hold their defaults there
    saved = {**{f.name: f.default for f in dataclasses.fields(ModelConfig)
                if f.name not in saved and f.default is not dataclasses.MISSING}, **saved}
    ours = model.config.to_dict()
    differences = [f"{key} {saved.get(key)!r} (this run: {ours.get(key)!r})"
                   for key in sorted(set(saved) | set(ours)) if saved.get(key) != ours.get(key)]
    if differences:
        raise DepthAttnError(f"checkpoint {path} holds another model than this run trains: "
                             f"{'; '.join(differences)}")


def read_state(path: Path) -> dict[str, Any]:
    """Checkpoint ``path``'s state.json."""
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


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
    """Restore model, optimizer, scheduler and RNG in place; return state.json."""
    check_same_model(path, model)
    extra = load_training_state(path)
    loaded = load_model(path, device=next(model.parameters()).device)
    model.load_state_dict(loaded.state_dict(), strict=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    state = read_state(path)
    log.info("resumed from %s (step %d)", path, state["step"])
    return state


@dataclass
class _Pending:
    """An asynchronous save whose shards may still be in flight."""

    future: Any
    staging: Path
    final: Path
    step: int
    rank0_files: dict[str, Any]


class ShardedCheckpointer:
    """Writes and prunes the DCP checkpoints of one run; every rank holds one and calls
    ``save`` and ``finish`` at the same steps."""

    def __init__(self, checkpoints: Path, dist: Distributed, keep: int,
                 async_save: bool = False) -> None:
        self.checkpoints, self.dist, self.keep = Path(checkpoints), dist, keep
        self.async_save = async_save
        self._pending: _Pending | None = None
        self._group = None
        if async_save and dist.enabled:
            self._group = torch.distributed.new_group(backend="gloo")

    def save(self, step: int, model: CausalLM, optimizer: torch.optim.Optimizer,
             scheduler: Any, state: dict[str, Any]) -> Path:
        """Checkpoint ``step`` (collective). Returns the folder it is (or will be) renamed to."""
        self.finish()  # one save in flight at most
        final = self.checkpoints / checkpoint_name(step)
        staging = None
        if self.dist.is_main:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            staging = staging_dir(final)
        staging = Path(self.dist.broadcast(str(staging) if staging else None))
        model_state, optim_state = get_state_dict(model, optimizer)
        shards = {"model": model_state, "optimizer": optim_state}
        rank0_files = {"config": model.config.to_dict(), "scheduler": scheduler.state_dict(),
                       "rng": rng_state(), "state": {"step": step, **state}}
        shards_dir = str(staging / SHARDS_DIR)
        future = None
        if self.async_save:
            future = dcp.async_save(shards, checkpoint_id=shards_dir, process_group=self._group)
        else:
            dcp.save(shards, checkpoint_id=shards_dir)
        self._pending = _Pending(future, staging, final, step, rank0_files)
        if future is None:
            self.finish()
        return final

    def finish(self) -> None:
        """Complete the save in flight, if any: wait for every rank's shards, then rank 0 writes
        its files and the manifest and renames the folder into place."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.future is not None:
            pending.future.result()
        self.dist.barrier()  # every rank's shards are written
        if self.dist.is_main:
            files = pending.rank0_files
            write_json_atomic(pending.staging / CONFIG_NAME, {"format": "depthattn",
                                                              **files["config"]})
            torch.save({"scheduler": files["scheduler"], "rng": files["rng"]},
                       pending.staging / TRAINER_FILE)
            write_json_atomic(pending.staging / STATE_FILE, files["state"])
            write_file_manifest(pending.staging)  # last: the folder is complete
            commit_dir(pending.staging, pending.final, replace=True)
            write_text_atomic(self.checkpoints / LATEST, pending.final.name + "\n")
            prune_checkpoints(self.checkpoints, self.keep, protect=pending.final.name)
        self.dist.barrier()  # nobody reads the checkpoint before it is in place


def load_sharded(path: Path, model: CausalLM, optimizer: torch.optim.Optimizer,
                 scheduler: Any) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG from a DCP checkpoint, at any world size
    (also in a plain process, whose model is not sharded); return state.json."""
    path = Path(path)
    check_same_model(path, model)
    model_state, optim_state = get_state_dict(model, optimizer)
    shards = {"model": model_state, "optimizer": optim_state}
    dcp.load(shards, checkpoint_id=str(path / SHARDS_DIR),
             no_dist=not torch.distributed.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=shards["model"],
                   optim_state_dict=shards["optimizer"])
    extra = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    state = read_state(path)
    log.info("resumed from %s (step %d, written by %s process(es))", path, state["step"],
             state.get("world_size", "?"))
    return state


def full_model_state(model: CausalLM, dist: Distributed) -> dict[str, torch.Tensor] | None:
    """The whole state of a sharded model on rank 0's CPU (None elsewhere); collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    return state if dist.is_main else None


def export_sharded(path: str | Path, out: str | Path) -> Path:
    """The model of a DCP checkpoint as a depthattn model folder (config.json +
    model.safetensors) that ``load_model``, ``convert`` and the Hugging Face class read."""
    return save_model(load_model(path), out)
