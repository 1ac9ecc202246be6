"""Checkpoints of a distributed run, through ``torch.distributed.checkpoint`` (DCP): every rank
writes its own shards of the model and the optimizer state, in parallel, and a later run loads
them on any number of ranks (DCP reshards), or in one plain process.

    run_dir/checkpoints/step_0000100/
        dcp/            .metadata + one __<rank>_0.distcp per rank: model and AdamW state,
                        keyed by parameter name (get_state_dict), so the layout does not
                        depend on the world size
        config.json     the ModelConfig (resume refuses another model by name)
        trainer.pt      scheduler state and rank 0's RNG state (tensors and plain data only)
        state.json      step, tokens, tokens_per_step, world_size, non-finite counters
        manifest.json   size and sha256 of every file above, written last

Atomic like the single-process checkpoint: all ranks write into one hidden staging folder
(named after rank 0's pid), rank 0 writes its files and the manifest after every shard is on
disk, then renames the folder into place. A checkpoint interrupted at any point is never taken
as the newest one (no manifest, or one that does not verify).

``async_save``: the state is copied to host memory and written by a background thread while
training goes on (its own gloo process group, so its collectives never interleave with the
training step's); the folder is finished (manifest, rename, ``latest``) at the next checkpoint
or at the end of training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from depthattn.io import (
    CONFIG_NAME,
    SHARDS_DIR,
    is_sharded,
    load_model,
    save_model,
)
from depthattn.model.decoder import CausalLM
from depthattn.train.checkpoint import (
    LATEST,
    STATE_FILE,
    checkpoint_name,
    model_differences,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from depthattn.train.distributed import Distributed
from depthattn.utils.atomic import (
    commit_dir,
    staging_dir,
    write_json_atomic,
    write_text_atomic,
)
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.file_manifest import write_file_manifest

log = logging.getLogger(__name__)

TRAINER_FILE = "trainer.pt"


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
            import torch.distributed as torch_dist

            self._group = torch_dist.new_group(backend="gloo")

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
        if self.async_save:
            future = dcp.async_save(shards, checkpoint_id=str(staging / SHARDS_DIR),
                                    process_group=self._group)
            self._pending = _Pending(future, staging, final, step, rank0_files)
        else:
            dcp.save(shards, checkpoint_id=str(staging / SHARDS_DIR))
            self._pending = _Pending(None, staging, final, step, rank0_files)
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
    differences = model_differences(path, model)
    if differences:
        raise DepthAttnError(f"checkpoint {path} holds another model than this run trains: "
                         f"{'; '.join(differences)}")
    model_state, optim_state = get_state_dict(model, optimizer)
    shards = {"model": model_state, "optimizer": optim_state}
    dcp.load(shards, checkpoint_id=str(path / SHARDS_DIR),
             no_dist=not torch.distributed.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=shards["model"],
                   optim_state_dict=shards["optimizer"])
    extra = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    log.info("resumed from %s (step %d, written by %s process(es))", path, state["step"],
             state.get("world_size", "?"))
    return state


def load_full_state(model: CausalLM, optimizer: torch.optim.Optimizer,
                    model_state: dict[str, torch.Tensor],
                    optim_state: dict[str, Any]) -> None:
    """Load whole (unsharded, name-keyed) model and optimizer state into a sharded model: each
    rank keeps its own shards. How a single-process checkpoint resumes under torchrun."""
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


def full_model_state(model: CausalLM, dist: Distributed) -> dict[str, torch.Tensor] | None:
    """The whole state of a sharded model on rank 0's CPU (None elsewhere); collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    return state if dist.is_main else None


def export_sharded(path: str | Path, out: str | Path) -> Path:
    """The model of a DCP checkpoint as a depthattn model folder (config.json +
    model.safetensors) that ``load_model``, ``convert`` and the Hugging Face class read."""
    return save_model(load_model(path), out)


__all__ = ["ShardedCheckpointer", "export_sharded", "full_model_state", "is_sharded",
           "load_full_state", "load_sharded"]
