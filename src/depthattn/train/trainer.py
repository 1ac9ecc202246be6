"""The training loop: data → model → AdamW with warmup + cosine → metrics, evaluation and
atomic checkpoints; ``resume=True`` continues a run exactly (same batches, same losses), also
after the process was killed at any point (it restarts from the newest checkpoint that
verifies). SIGTERM / SIGINT write a checkpoint and stop (``signals``); a non-finite step is
skipped (``guard``); memory, disk, data and tokenizer are checked before any work
(``preflight``, ``depthattn.data.verify``).

Under torchrun the same loop runs on every rank (``distributed``): the model is sharded with
FSDP2 (``fsdp``), each rank reads its slice of the global batch, checkpoints are sharded
(``sharded_checkpoint``), and every decision (skip a step, stop on a signal, stop a diverging
run) is taken from all-reduced numbers, so all ranks take it together. Rank 0 alone logs, shows
progress and writes the run's files."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from depthattn.data.loader import IGNORE_INDEX, TrainBatches, ValidationBatches
from depthattn.data.resolve import resolve_data
from depthattn.data.shards import TokenStream
from depthattn.data.tokenizer import check_vocab_fits
from depthattn.data.verify import verify_prepared
from depthattn.eval.perplexity import EvalResult, evaluate_perplexity, nll_result
from depthattn.io import model_from_state, save_model
from depthattn.model.decoder import CausalLM
from depthattn.train import distributed, faults
from depthattn.train.checkpoint import (
    STATE_FILE,
    load_checkpoint,
    save_checkpoint,
)
from depthattn.train.config import TrainConfig
from depthattn.train.distributed import Distributed
from depthattn.train.fsdp import average_replicated_grads, clip_grad_norm, shard_model
from depthattn.train.guard import NonFiniteGuard, NonFiniteTraining
from depthattn.train.init_from import initialise_from
from depthattn.train.loop_depth import loop_depth_at, training_depths
from depthattn.train.metrics import MetricsLog, NullMetrics
from depthattn.train.optim import build_optimizer, build_scheduler
from depthattn.train.preflight import check_disk, check_memory, count_parameters
from depthattn.train.run_dir import RunDir
from depthattn.train.sharded_checkpoint import (
    ShardedCheckpointer,
    full_model_state,
    is_sharded,
    load_full_state,
    load_sharded,
)
from depthattn.train.signals import StopOnSignal, TrainingStopped
from depthattn.utils.atomic import write_json_atomic
from depthattn.utils.devices import autocast_dtype, resolve_device

log = logging.getLogger(__name__)

# Fields that may change when a run is resumed; any other difference is refused. (run_dir:
# the run is wherever it is now; a moved run, or one named by another path, resumes.
# micro_batch_size: how a step's sequences are spread over processes and micro batches, which
# may change with the world size as long as the tokens per step stay; _check_step_size.)
RESUMABLE_CHANGES = {"progress", "tensorboard", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "device", "max_bad_steps", "run_dir", "dp_replicate",
                     "fsdp_cpu_offload", "async_checkpoint", "dist_timeout_s",
                     "micro_batch_size"}


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    step: int
    val: EvalResult
    num_parameters: int
    tokens_per_s: float


def changed_fields(run: RunDir, config: TrainConfig) -> list[str]:
    """The fields of ``config`` that differ from the run's saved config and may not change."""
    saved = run.read_config()
    return sorted(k for k, v in config.to_dict().items()
                  if k not in RESUMABLE_CHANGES and saved.get(k) != v)


def _check_run_dir(run: RunDir, config: TrainConfig, resume: bool) -> None:
    if run.path.exists() and not run.path.is_dir():
        raise ValueError(f"run_dir {run.path} is a file, not a folder; choose another run_dir")
    if not run.is_run():
        # Leftovers of interrupted atomic writes do not make a folder "something else".
        others = sorted(p.name for p in run.path.iterdir()
                        if ".tmp-" not in p.name) if run.path.is_dir() else []
        if others:
            listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise ValueError(f"run_dir {run.path} holds something else than a training run "
                             f"({len(others)} entries: {listed}) and no train_config.json; "
                             f"choose a new or empty folder")
        return
    if not resume:
        raise ValueError(f"run_dir {run.path} already holds a run; pass resume (--resume) to "
                         f"continue it, or choose another run_dir")
    changed = changed_fields(run, config)
    if changed:
        saved = run.read_config()
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise ValueError(f"cannot resume {run.path} with a different configuration ({diffs}); "
                         f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change")


def _resume_point(run: RunDir) -> Path | None:
    """The newest intact checkpoint; refuse when checkpoints exist but none verifies (starting
    over would silently throw the run away)."""
    checkpoint, skipped = run.find_checkpoint()
    for reason in skipped:
        log.warning("skipping corrupt checkpoint %s", reason)
    if checkpoint is None and skipped:
        raise ValueError(f"no checkpoint of {run.path} verifies, so the run cannot resume: "
                         f"{'; '.join(skipped)}. Move the checkpoints away to train it again "
                         f"from the start")
    return checkpoint


def _with_recompile_limit(compiled, graphs: int):
    """``compiled`` allowed at least ``graphs`` graphs: past Dynamo's recompile limit (8) a
    sampled-depth run would fall back to eager for every further r. The limit is a global
    setting, so it is raised only during the calls."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    limit = max(graphs, getattr(config, name))

    def call(*args, **kwargs):
        with config.patch(**{name: limit}):
            return compiled(*args, **kwargs)

    return call


def train(config: TrainConfig, resume: bool = False) -> RunResult:
    """Train one run into ``config.run_dir``; returns the final validation result. Under
    torchrun every rank calls it (see the module doc)."""
    dist, device = distributed.setup(resolve_device(config.device), config.dp_replicate,
                                     config.dist_timeout_s)
    try:
        return _train(config, resume, dist, device)
    finally:
        distributed.teardown()


def _prepared_data(config: TrainConfig, dist: Distributed):
    """The data manifest; rank 0 prepares what needs preparing while the others wait."""
    manifest = resolve_data(config.data, config.vocab_size,
                            progress=config.progress) if dist.is_main else None
    dist.barrier()
    if not dist.is_main:
        manifest = resolve_data(config.data, config.vocab_size, progress=False)
    return manifest


def _train(config: TrainConfig, resume: bool, dist: Distributed,
           device: torch.device) -> RunResult:
    run = RunDir(config.run_dir)
    run_dir = run.path
    amp_dtype = autocast_dtype(config.dtype, device)
    world = dist.world_size
    # --- every check before any work ---
    config.model_config()  # preset, method and options, before data preparation can start
    accumulation = config.grad_accumulation_for(world)
    tokens_per_step = config.tokens_per_step_for(world)
    if config.fsdp_cpu_offload and not (dist.enabled and device.type == "cuda"):
        raise ValueError("fsdp_cpu_offload keeps a sharded GPU run's state in CPU memory: it "
                         "needs torchrun and device cuda")
    if config.async_checkpoint and not dist.enabled:
        raise ValueError("async_checkpoint writes the sharded checkpoints of a torchrun job; a "
                         "single process writes its checkpoints whole: launch with torchrun, or "
                         "leave async_checkpoint false")
    _check_run_dir(run, config, resume)
    dist.barrier()  # every rank has looked at run_dir before rank 0 writes into it
    manifest = _prepared_data(config, dist)
    train_stream = TokenStream(manifest, "train")
    val_stream = TokenStream(manifest, "validation")
    model_config = config.model_config(vocab_size=train_stream.vocab_size)
    check_vocab_fits(train_stream.vocab_size, model_config.vocab_size)
    batches = TrainBatches(train_stream, config.seq_len, config.micro_batch_size * accumulation,
                           seed=config.seed, rank=dist.rank, world_size=world,
                           max_seq_len=model_config.max_seq_len, accumulation=accumulation)
    # Intermediate evaluations may use a sample of windows; the final one reads the whole split.
    val_batches = ValidationBatches(val_stream, config.seq_len, config.micro_batch_size,
                                    rank=dist.rank, world_size=world,
                                    max_windows=config.eval_windows or None,
                                    max_seq_len=model_config.max_seq_len)
    final_val_batches = ValidationBatches(val_stream, config.seq_len, config.micro_batch_size,
                                          rank=dist.rank, world_size=world,
                                          max_seq_len=model_config.max_seq_len)
    parameters = count_parameters(model_config)
    if not dist.enabled:  # a sharded run's need per device: `depthattn train --dry-run`
        check_memory(model_config, config, device, amp_dtype, parameters)
    check_disk(run_dir, parameters)
    verify_prepared(manifest)
    checkpoint = _resume_point(run) if resume and run.is_run() else None
    if checkpoint is not None:
        _check_step_size(checkpoint, tokens_per_step, world)

    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run.config_file)
        model_config.save(run.model_config_file)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = CausalLM(model_config).to(device)
    if config.init_from and checkpoint is None:
        initialise_from(model, config.init_from)
    model.model.activation_checkpointing = config.activation_checkpointing
    replicated: list[torch.nn.Parameter] = []
    if dist.enabled:
        replicated = shard_model(model, dist.mesh, param_dtype=amp_dtype,
                                 cpu_offload=config.fsdp_cpu_offload,
                                 compile_blocks=config.compile)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    guard = NonFiniteGuard(config.max_bad_steps)
    start_step = 0
    if checkpoint is not None:
        state = _load_checkpoint(checkpoint, model, optimizer, scheduler, config, dist)
        start_step = state["step"]
        guard.restore(state)
    # Training goes through CausalLM.loss (chunked cross-entropy: no full logits); evaluation
    # through forward. Compiling the bound method compiles the whole loss, decoder included;
    # a sharded model compiles block by block instead (shard_model).
    whole_compile = config.compile and not dist.enabled
    train_loss = model.loss
    if whole_compile:
        # one graph per depth r (Dynamo specialises on it), + evaluation's, + a shorter batch's
        graphs = len(training_depths(config, model_config)) + 2
        train_loss = _with_recompile_limit(torch.compile(model.loss), graphs)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    # Records after the resumed step were written by the interrupted process and are written
    # again now: drop them, so no step appears twice.
    metrics = (MetricsLog(run, resume_step=start_step if resume else None,
                          tensorboard=config.tensorboard) if dist.is_main else NullMetrics())
    checkpointer = (ShardedCheckpointer(run.checkpoints_dir, dist, config.keep_checkpoints,
                                        async_save=config.async_checkpoint)
                    if dist.enabled else None)
    log.info("%s: %s on %s x %d, %s parameters, %d steps x %d tokens", run_dir,
             model_config.method, device, world, f"{parameters:,}", config.steps,
             tokens_per_step)

    def evaluate(final: bool = False) -> EvalResult:
        local = evaluate_perplexity(model, final_val_batches if final else val_batches, device,
                                    amp_dtype, loss=train_loss, allow_empty=dist.enabled)
        return _all_ranks(local, dist)

    def checkpoint_at(done: int) -> Path:
        # Metrics up to this step reach the disk before a checkpoint says the step is done.
        metrics.sync()
        state = {"tokens": done * tokens_per_step, "tokens_per_step": tokens_per_step,
                 "world_size": world, **guard.state()}
        if checkpointer is not None:
            return checkpointer.save(done, model, optimizer, scheduler, state)
        return save_checkpoint(run.checkpoints_dir, done, model, optimizer, scheduler, state,
                               keep=config.keep_checkpoints)

    model.train()
    val: EvalResult | None = None
    interval_start, interval_tokens, throughput = time.perf_counter(), 0, 0.0
    run_start = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start_step, desc=f"train {model_config.method}",
               disable=not (config.progress and dist.is_main), dynamic_ncols=True)
    try:
        with StopOnSignal() as stop:
            for step in range(start_step, config.steps):
                inputs, targets = batches.batch(step)
                # a looped model's depth this step: a function of (seed, step), as the data
                depth = loop_depth_at(config, model_config, step)
                local_loss = 0.0
                for micro_inputs, micro_targets in zip(inputs.chunk(accumulation),
                                                       targets.chunk(accumulation)):
                    with autocast:
                        loss = train_loss(micro_inputs.to(device), micro_targets.to(device),
                                          ignore_index=IGNORE_INDEX,
                                          **depth.kwargs()) / accumulation
                    loss.backward()
                    local_loss += loss.item()
                if replicated:
                    average_replicated_grads(replicated)
                max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
                if dist.enabled:
                    grad_norm = clip_grad_norm(list(model.parameters()), max_norm)
                else:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                                     max_norm))
                faults.in_step(step)
                # The step's loss and whether any rank was signalled: the same on every rank,
                # so every rank skips, logs and stops alike.
                loss_sum, = dist.all_reduce([local_loss])
                step_loss = loss_sum / world
                signalled = int(dist.all_reduce([float(stop.requested or 0)], op="max")[0])
                lr = optimizer.param_groups[0]["lr"]
                skip = guard.reason_to_skip(step_loss, grad_norm)
                if skip is None:
                    optimizer.step()
                # The schedule advances either way: the LR stays a function of the step.
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                guard.record(skip is not None)
                done = step + 1
                interval_tokens += tokens_per_step
                last = done == config.steps
                bar.update(1)
                if skip is not None:
                    log.warning("step %d skipped: %s (%d skipped so far)", done, skip,
                                guard.skipped_steps)
                    metrics.write({"step": done, "skipped": skip, **guard.state()})
                    if guard.exhausted:
                        raise NonFiniteTraining(_diverged_message(run, done, guard, skip))
                elif config.log_every and (done % config.log_every == 0 or last):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    now = time.perf_counter()
                    throughput = interval_tokens / (now - interval_start)
                    metrics.write({"step": done, "tokens": done * tokens_per_step,
                                   "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                                   "skipped_steps": guard.skipped_steps,
                                   "tokens_per_s": throughput, "elapsed_s": now - run_start})
                    bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{throughput:,.0f}")
                    interval_start, interval_tokens = now, 0
                if last or (config.eval_every and done % config.eval_every == 0):
                    val = evaluate(final=last)
                    metrics.write({"step": done, **val.as_dict()})
                saved = last or (config.checkpoint_every and done % config.checkpoint_every == 0)
                if saved or signalled:
                    written = checkpoint_at(done)
                if signalled and not last:
                    if checkpointer is not None:
                        checkpointer.finish()
                    raise TrainingStopped(signalled, done, config.steps, written, run_dir)
        if checkpointer is not None:
            checkpointer.finish()
    finally:
        bar.close()
        metrics.close()
    if val is None:  # resumed a run that had already finished
        val = evaluate(final=True)
    _export_final(model, run, dist)
    result = RunResult(run_dir, config.steps, val, parameters, throughput)
    if dist.is_main:
        write_json_atomic(run.summary_file, _summary(result, config, model_config,
                                                    guard.skipped_steps, tokens_per_step,
                                                    world))
    dist.barrier()
    return result


def _check_step_size(checkpoint: Path, tokens_per_step: int, world: int) -> None:
    """A run resumed on another number of processes must keep its tokens per step, or the data
    and the schedule would no longer be those of the run it continues."""
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    saved = state.get("tokens_per_step", state["tokens"] // max(1, state["step"]))
    if saved != tokens_per_step:
        raise ValueError(
            f"{checkpoint} was trained at {saved:,} tokens per step (on "
            f"{state.get('world_size', 1)} process(es)); here a step is {tokens_per_step:,} "
            f"tokens on {world}. Set global_batch_tokens={saved} (and a micro_batch_size that "
            f"divides it over {world} process(es)) to resume it")


def _load_checkpoint(path: Path, model: CausalLM, optimizer: torch.optim.Optimizer,
                     scheduler: Any, config: TrainConfig, dist: Distributed) -> dict[str, Any]:
    """Either checkpoint layout, into a plain or a sharded model."""
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
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(plain, plain_optimizer)
    load_full_state(model, optimizer, model_state, optim_state)
    scheduler.load_state_dict(plain_scheduler.state_dict())
    return state


def _all_ranks(local: EvalResult, dist: Distributed) -> EvalResult:
    """One rank's validation result summed with the others' (token-weighted)."""
    if not dist.enabled:
        return local
    total, tokens = dist.all_reduce([local.loss * local.tokens, float(local.tokens)])
    return nll_result(total, round(tokens))


def _export_final(model: CausalLM, run: RunDir, dist: Distributed) -> None:
    """The final model, whole, as one safetensors folder (``run_dir/model``), by rank 0."""
    if not dist.enabled:
        save_model(model, run.model_dir)
        return
    state = full_model_state(model, dist)  # collective: every rank takes part
    if dist.is_main:
        plain = model_from_state(model.config, state)
        save_model(plain, run.model_dir)


def _diverged_message(run: RunDir, step: int, guard: NonFiniteGuard, reason: str) -> str:
    good = run.latest_checkpoint()
    where = (f"the last good checkpoint is {good}" if good is not None
             else "no checkpoint was written yet")
    return (f"training stopped at step {step}: {guard.streak} steps in a row were skipped "
            f"(max_bad_steps {guard.max_bad_steps}; the last: {reason}); {where}. Lower lr, "
            f"raise warmup_ratio or check the data before resuming")


def _summary(result: RunResult, config: TrainConfig, model_config: Any,
             skipped_steps: int, tokens_per_step: int, world_size: int) -> dict[str, Any]:
    return {"method": model_config.method, "method_options": model_config.method_options,
            "seed": config.seed, "steps": result.step, "world_size": world_size,
            "tokens": result.step * tokens_per_step,
            "num_parameters": result.num_parameters, "tokens_per_s": result.tokens_per_s,
            "skipped_steps": skipped_steps, **result.val.as_dict()}
