"""Starting a run, or resuming one: what the run directory must hold, which configuration
fields may change, which checkpoint a run resumes from, and loading it into a plain or a sharded
model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict

from depthattn.model.decoder import CausalLM
from depthattn.train.checkpoint import STATE_FILE, load_checkpoint
from depthattn.train.config import TrainConfig
from depthattn.train.distributed import Distributed
from depthattn.train.optim import build_optimizer, build_scheduler
from depthattn.train.run_dir import RunDir
from depthattn.train.sharded_checkpoint import is_sharded, load_full_state, load_sharded
from depthattn.utils.errors import DepthAttnError

log = logging.getLogger(__name__)

# Fields that may change when a run is resumed; any other difference is refused. (run_dir:
# the run is wherever it is now; a moved run, or one named by another path, resumes.
# micro_batch_size: how a step's sequences are spread over processes and micro batches, which
# may change with the world size as long as the tokens per step stay; check_step_size.)
RESUMABLE_CHANGES = {"progress", "tensorboard", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "device", "max_bad_steps", "run_dir", "dp_replicate",
                     "fsdp_cpu_offload", "async_checkpoint", "dist_timeout_s",
                     "micro_batch_size"}


def changed_fields(run: RunDir, config: TrainConfig) -> list[str]:
    """The fields of ``config`` that differ from the run's saved config and may not change."""
    saved = run.read_config()
    return sorted(k for k, v in config.to_dict().items()
                  if k not in RESUMABLE_CHANGES and saved.get(k) != v)


def check_run_dir(run: RunDir, config: TrainConfig, resume: bool) -> None:
    """``run_dir`` is new or empty, or (with ``resume``) a run of the same configuration (a
    file in its place was refused when the lock was taken)."""
    if not run.is_run():
        # Leftovers of interrupted atomic writes do not make a folder "something else", nor
        # does the lock this process holds.
        entries = run.path.iterdir() if run.path.is_dir() else []
        others = sorted(p.name for p in entries if ".tmp-" not in p.name and p != run.lock_file)
        if others:
            listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise DepthAttnError(f"run_dir {run.path} holds something else than a training run "
                             f"({len(others)} entries: {listed}) and no train_config.json; "
                             f"choose a new or empty folder")
        return
    if not resume:
        raise DepthAttnError(f"run_dir {run.path} already holds a run; pass resume (--resume) to "
                         f"continue it, or choose another run_dir")
    changed = changed_fields(run, config)
    if changed:
        saved = run.read_config()
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise DepthAttnError(f"cannot resume {run.path} with a different configuration ({diffs}); "
                         f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change")


def resume_point(run: RunDir) -> Path | None:
    """The newest intact checkpoint; refuse when checkpoints exist but none verifies (starting
    over would silently throw the run away)."""
    checkpoint, skipped = run.find_checkpoint()
    for reason in skipped:
        log.warning("skipping corrupt checkpoint %s", reason)
    if checkpoint is None and skipped:
        raise DepthAttnError(f"no checkpoint of {run.path} verifies, so the run cannot resume: "
                         f"{'; '.join(skipped)}. Move the checkpoints away to train it again "
                         f"from the start")
    return checkpoint


def check_step_size(checkpoint: Path, tokens_per_step: int, world: int) -> None:
    """A run resumed on another number of processes must keep its tokens per step, or the data
    and the schedule would no longer be those of the run it continues."""
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    saved = state.get("tokens_per_step", state["tokens"] // max(1, state["step"]))
    if saved != tokens_per_step:
        raise DepthAttnError(
            f"{checkpoint} was trained at {saved:,} tokens per step (on "
            f"{state.get('world_size', 1)} process(es)); here a step is {tokens_per_step:,} "
            f"tokens on {world}. Set global_batch_tokens={saved} (and a micro_batch_size that "
            f"divides it over {world} process(es)) to resume it")


def load_any_checkpoint(path: Path, model: CausalLM, optimizer: torch.optim.Optimizer,
                        scheduler: Any, config: TrainConfig,
                        dist: Distributed) -> dict[str, Any]:
    """Either checkpoint layout, into a plain or a sharded model; returns state.json."""
    if is_sharded(path):
        return load_sharded(path, model, optimizer, scheduler)
    if not dist.enabled:
        return load_checkpoint(path, model, optimizer, scheduler)
    # A single-process checkpoint continued under torchrun: load it whole into a plain copy,
    # then hand every rank its shards of the weights and of the AdamW state.
    plain = CausalLM(model.config)
    plain_optimizer = build_optimizer(plain, config)
    plain_scheduler = build_scheduler(plain_optimizer, config)
    state = load_checkpoint(path, plain, plain_optimizer, plain_scheduler)
    model_state, optim_state = get_state_dict(plain, plain_optimizer)
    load_full_state(model, optimizer, model_state, optim_state)
    scheduler.load_state_dict(plain_scheduler.state_dict())
    return state


__all__ = ["RESUMABLE_CHANGES", "changed_fields", "check_run_dir", "check_step_size",
           "load_any_checkpoint", "resume_point"]
