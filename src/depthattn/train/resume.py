"""Starting a run, or resuming one: what the run directory must hold, which configuration
fields may change, which checkpoint a run resumes from, loading it into a plain or a sharded
model, and ``init_from``: a fresh run's weights copied from an existing model (continued
pretraining, or a Qwen3 / authors'-format checkpoint retrofitted as Depth-Attention)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from depthattn.io import is_sharded, load_model
from depthattn.model.decoder import CausalLM
from depthattn.train.checkpoint import (
    load_checkpoint,
    load_sharded,
    read_state,
)
from depthattn.train.config import TrainConfig
from depthattn.train.distributed import Distributed
from depthattn.train.optim import build_optimizer, build_scheduler
from depthattn.train.run_dir import RunDir
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
    state = read_state(checkpoint)
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
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))  # each rank keeps its shards
    scheduler.load_state_dict(plain_scheduler.state_dict())
    return state


# Fields that decide the shape of a weight, or what a weight means.
GEOMETRY_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                   "num_kv_heads", "head_dim", "tie_embeddings", "prelude_layers",
                   "loop_layers", "attention", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim",
                   "qk_rope_head_dim", "v_head_dim", "rope_interleave")
ADDED_BY_METHOD = ("model.cross_layer.", "model.loop_injection.")


def check_geometry(source: str, theirs, ours) -> None:
    """Raise naming every geometry field in which the source differs from the run's model."""
    differences = [f"{name} {getattr(theirs, name)!r} (this run: {getattr(ours, name)!r})"
                   for name in GEOMETRY_FIELDS if getattr(theirs, name) != getattr(ours, name)]
    if differences:
        hint = (" The vocabulary comes from the run's tokenizer: prepare the data with the "
                "source model's tokenizer." if any(d.startswith("vocab_size") for d in
                                                   differences) else "")
        raise DepthAttnError(f"init_from {source} has another geometry than this run's model: "
                             f"{'; '.join(differences)}.{hint}")


@torch.no_grad()
def initialise_from(model: CausalLM, source: str) -> None:
    """Copy the weights of ``source`` (any folder ``load_model`` reads) into ``model`` before it
    is sharded or trained. The geometry must match; the method may differ, and the parameters
    only it adds (``ADDED_BY_METHOD``) keep their fresh initialisation."""
    loaded = load_model(source)
    check_geometry(source, loaded.config, model.config)
    theirs, ours = loaded.state_dict(), model.state_dict()
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    not_added = [k for k in missing if not k.startswith(ADDED_BY_METHOD)]
    if not_added or unexpected:
        parts = []
        if not_added:
            parts.append(f"missing {', '.join(not_added[:4])}")
        if unexpected:
            parts.append(f"not in this model: {', '.join(unexpected[:4])} (method "
                         f"{loaded.config.method!r} has parameters {model.config.method!r} "
                         f"lacks)")
        raise DepthAttnError(f"init_from {source} does not fit this run's model: "
                             f"{'; '.join(parts)}")
    for name, tensor in theirs.items():
        if ours[name].shape != tensor.shape:
            raise DepthAttnError(f"init_from {source}: {name} has shape {tuple(tensor.shape)}, "
                                 f"this run's model {tuple(ours[name].shape)}")
        ours[name].copy_(tensor)
    log.info("initialised from %s (method %s)%s", source, loaded.config.method,
             f"; {len(missing)} parameter tensor(s) of {model.config.method} keep their "
             f"fresh initialisation" if missing else "")
