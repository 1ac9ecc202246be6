"""The training loop: data → model → AdamW with warmup + cosine → metrics, evaluation and
atomic checkpoints, resumable exactly (same batches, same losses) after any interruption
(docs/reliability.md); one process at a time trains a run (``lock``). ``Trainer.__init__``
sets a run up, ``Trainer.train_step`` is one optimizer step, ``Trainer.train`` the loop around
it that logs, evaluates and checkpoints.

Under torchrun every rank runs the same loop on its slice of the global batch, the model
sharded with FSDP2 (docs/distributed.md); every decision (skip a step, stop on a signal, stop a
diverging run) is taken from all-reduced numbers, so all ranks take it together. Rank 0 alone
logs, shows progress and writes the run's files."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch.distributed.checkpoint.api import CheckpointException
from tqdm.auto import tqdm

from depthattn.data.loader import IGNORE_INDEX, TrainBatches, ValidationBatches
from depthattn.data.prepare_text import resolve_data
from depthattn.data.prepared import verify_prepared
from depthattn.data.shards import TokenStream
from depthattn.data.tokenizer import check_vocab_fits
from depthattn.eval.perplexity import EvalResult, evaluate_perplexity, nll_result
from depthattn.io import model_from_state, save_model
from depthattn.model.decoder import CausalLM
from depthattn.train import distributed
from depthattn.train.checkpoint import (
    ShardedCheckpointer,
    full_model_state,
    save_checkpoint,
)
from depthattn.train.config import TrainConfig
from depthattn.train.distributed import Distributed
from depthattn.train.fsdp import average_replicated_grads, clip_grad_norm, shard_model
from depthattn.train.guard import NonFiniteGuard, NonFiniteTraining
from depthattn.train.lock import hold_run_lock
from depthattn.train.loop_depth import LoopDepth, loop_depth_at, training_depths
from depthattn.train.metrics import MetricsLog, NullMetrics
from depthattn.train.optim import build_optimizer, build_scheduler
from depthattn.train.preflight import check_disk, check_memory, count_parameters
from depthattn.train.resume import (
    check_run_dir,
    check_step_size,
    initialise_from,
    load_any_checkpoint,
    resume_point,
)
from depthattn.train.run_dir import RunDir
from depthattn.train.signals import StopOnSignal, TrainingStopped
from depthattn.utils.atomic import write_json_atomic
from depthattn.utils.devices import autocast_dtype, resolve_device
from depthattn.utils.errors import DepthAttnError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    step: int
    val: EvalResult
    num_parameters: int
    tokens_per_s: float


@dataclass(frozen=True)
class StepOutput:
    """What a step leaves for the log. The tensors stay on the device until a logged step
    reads them."""

    loss: torch.Tensor  # the step's loss, the mean over ranks, float64
    grad_norm: torch.Tensor  # before clipping
    lr: float  # the step's learning rate
    skipped: str | None  # why the weights were not updated, or None


def train(config: TrainConfig, resume: bool = False) -> RunResult:
    """Train one run into ``config.run_dir``; returns the final validation result. Under
    torchrun every rank calls it (see the module doc)."""
    dist, device = distributed.setup(resolve_device(config.device), config.dp_replicate,
                                     config.dist_timeout_s)
    try:
        check_config(config, dist, device)
        with hold_run_lock(RunDir(config.run_dir), dist):
            return Trainer(config, resume, dist, device).train()
    finally:
        distributed.teardown()


def check_config(config: TrainConfig, dist: Distributed, device: torch.device) -> None:
    """What the configuration alone tells, before anything is read or written."""
    config.model_config()  # preset, method and options, before data preparation can start
    config.grad_accumulation_for(dist.world_size)  # the global batch splits over the ranks
    if config.fsdp_cpu_offload and not (dist.enabled and device.type == "cuda"):
        raise DepthAttnError("fsdp_cpu_offload keeps a sharded GPU run's state in CPU memory: it "
                             "needs torchrun and device cuda")
    if config.async_checkpoint and not dist.enabled:
        raise DepthAttnError("async_checkpoint writes the sharded checkpoints of a torchrun job; a "
                             "single process writes its checkpoints whole: launch with torchrun, "
                             "or "
                             "leave async_checkpoint false")


class Trainer:
    """One run on this process, from its setup to its final model."""

    def __init__(self, config: TrainConfig, resume: bool, dist: Distributed,
                 device: torch.device) -> None:
        self.config, self.dist, self.device = config, dist, device
        self.run = RunDir(config.run_dir)
        self.world = dist.world_size
        self.accumulation = config.grad_accumulation_for(self.world)
        self.tokens_per_step = config.tokens_per_step_for(self.world)
        self.amp_dtype = autocast_dtype(config.dtype, device)
        # --- every check before any work ---
        check_run_dir(self.run, config, resume)
        dist.barrier()  # every rank has looked at run_dir before rank 0 writes into it
        self._setup_data()
        self.parameters = count_parameters(self.model_config)
        if not dist.enabled:  # a sharded run's need per device: `depthattn train --dry-run`
            check_memory(self.model_config, config, device, self.amp_dtype, self.parameters)
        check_disk(self.run.path, self.parameters)
        verify_prepared(self.manifest)
        checkpoint = resume_point(self.run) if resume and self.run.is_run() else None
        if checkpoint is not None:
            check_step_size(checkpoint, self.tokens_per_step, self.world)
        # --- the run ---
        if dist.is_main:  # into the folder the lock made
            config.save(self.run.config_file)
            self.model_config.save(self.run.model_config_file)
        self._setup_model(from_scratch=checkpoint is None)
        self.step = 0  # steps done
        if checkpoint is not None:
            state = load_any_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler,
                                        config, dist)
            self.step = state["step"]
            self.guard.restore(state)
        # Records after the resumed step were written by the interrupted process and are written
        # again now: drop them, so no step appears twice.
        self.metrics = (MetricsLog(self.run, resume_step=self.step if resume else None,
                                   tensorboard=config.tensorboard)
                        if dist.is_main else NullMetrics())
        self.checkpointer = (ShardedCheckpointer(self.run.checkpoints_dir, dist,
                                                 config.keep_checkpoints,
                                                 async_save=config.async_checkpoint)
                             if dist.enabled else None)
        log.info("%s: %s on %s x %d, %s parameters, %d steps x %d tokens", self.run.path,
                 self.model_config.method, device, self.world, f"{self.parameters:,}",
                 config.steps, self.tokens_per_step)

    def _setup_data(self) -> None:
        """The prepared data (rank 0 prepares it while the others wait), the model config its
        tokenizer implies, this rank's training batches and validation windows."""
        config, dist = self.config, self.dist
        manifest = resolve_data(config.data, config.vocab_size,
                                progress=config.progress) if dist.is_main else None
        dist.barrier()
        if not dist.is_main:
            manifest = resolve_data(config.data, config.vocab_size, progress=False)
        self.manifest = manifest
        train_stream = TokenStream(manifest, "train")
        val_stream = TokenStream(manifest, "validation")
        self.model_config = config.model_config(vocab_size=train_stream.vocab_size)
        check_vocab_fits(train_stream.vocab_size, self.model_config.vocab_size)
        max_seq_len = self.model_config.max_seq_len
        self.batches = TrainBatches(train_stream, config.seq_len,
                                    config.micro_batch_size * self.accumulation,
                                    seed=config.seed, rank=dist.rank, world_size=self.world,
                                    max_seq_len=max_seq_len, accumulation=self.accumulation)
        # Intermediate evaluations may use a sample of windows; the final one reads them all.
        validation = functools.partial(ValidationBatches, val_stream, config.seq_len,
                                       config.micro_batch_size, rank=dist.rank,
                                       world_size=self.world, max_seq_len=max_seq_len)
        self.val_batches = validation(max_windows=config.eval_windows or None)
        self.final_val_batches = validation()

    def _setup_model(self, from_scratch: bool) -> None:
        """The model (sharded under torchrun), AdamW and its schedule, the non-finite guard, the
        loss a step calls (compiled when asked)."""
        config, dist = self.config, self.dist
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = CausalLM(self.model_config).to(self.device)
        if config.init_from and from_scratch:
            initialise_from(self.model, config.init_from)
        self.model.model.activation_checkpointing = config.activation_checkpointing
        self.replicated: list[torch.nn.Parameter] = []
        if dist.enabled:
            self.replicated = shard_model(self.model, dist.mesh, param_dtype=self.amp_dtype,
                                          cpu_offload=config.fsdp_cpu_offload,
                                          compile_blocks=config.compile)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.guard = NonFiniteGuard(config.max_bad_steps)
        # Training goes through CausalLM.loss (chunked cross-entropy: no full logits); evaluation
        # through forward. Compiling the bound method compiles the whole loss, decoder included;
        # a sharded model compiles block by block instead (shard_model).
        self.train_loss = self.model.loss
        if config.compile and not dist.enabled:
            # one graph per depth r (Dynamo specialises on it), + evaluation's, + a shorter batch's
            graphs = len(training_depths(config, self.model_config)) + 2
            self.train_loss = _with_recompile_limit(torch.compile(self.model.loss), graphs)
        self.autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                         if self.amp_dtype is not None else contextlib.nullcontext())

    def train_step(self, step: int) -> StepOutput:
        """Optimizer step ``step`` (0-based): forward and backward over its micro batches,
        gradients clipped, AdamW unless the step is not finite, the schedule advanced."""
        inputs, targets = self.batches.batch(step)
        # a looped model's depth this step: a function of (seed, step), as the data
        depth = loop_depth_at(self.config, self.model_config, step)
        # Summed on the device (in float64, as Python floats would): no wait for the device per
        # micro batch.
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        for micro_inputs, micro_targets in zip(inputs.chunk(self.accumulation),
                                               targets.chunk(self.accumulation)):
            loss += self.forward_backward(micro_inputs, micro_targets, depth)
        if self.replicated:
            average_replicated_grads(self.replicated)
        grad_norm = self.clip_gradients()
        # The mean over ranks, the same on every rank, so every rank skips (and logs) alike.
        loss = self.dist.all_reduce_tensor(loss) / self.world
        lr = self.optimizer.param_groups[0]["lr"]
        skipped = self.guard.reason_to_skip(loss, grad_norm)  # the step's one device sync
        if skipped is None:
            self.optimizer.step()
        # The schedule advances either way: the LR stays a function of the step.
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.guard.record(skipped is not None)
        return StepOutput(loss, grad_norm, lr, skipped)

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor,
                         depth: LoopDepth) -> torch.Tensor:
        """One micro batch's share of the step's loss, its gradients accumulated."""
        with self.autocast:
            loss = self.train_loss(inputs.to(self.device), targets.to(self.device),
                                   ignore_index=IGNORE_INDEX, **depth.kwargs()) / self.accumulation
        loss.backward()
        return loss.detach()

    def clip_gradients(self) -> torch.Tensor:
        """Clip the gradients to ``grad_clip``; their norm before clipping."""
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        if self.dist.enabled:
            return clip_grad_norm(list(self.model.parameters()), max_norm)
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)

    def train(self) -> RunResult:
        """The steps from where the run stands to ``config.steps``, then the final evaluation,
        the exported model and summary.json."""
        config = self.config
        self.model.train()
        self.val: EvalResult | None = None
        self.throughput = 0.0
        self._interval_start, self._interval_tokens = time.perf_counter(), 0
        self._run_start = time.perf_counter()
        self.bar = tqdm(total=config.steps, initial=self.step,
                        desc=f"train {self.model_config.method}",
                        disable=not (config.progress and self.dist.is_main), dynamic_ncols=True)
        try:
            with StopOnSignal() as stop:
                for step in range(self.step, config.steps):
                    output = self.train_step(step)
                    self.step = done = step + 1
                    # whether any rank was signalled: every rank stops after the same step
                    signalled = int(self.dist.all_reduce([float(stop.requested or 0)],
                                                         op="max")[0])
                    self.bar.update(1)
                    self.log(done, output)
                    last = done == config.steps
                    if last or _every(config.eval_every, done):
                        self.val = self.evaluate(final=last)
                        self.metrics.write({"step": done, **self.val.as_dict()})
                    if last or signalled or _every(config.checkpoint_every, done):
                        written = self.checkpoint(done)
                    if signalled and not last:
                        self.finish_checkpoints()
                        raise TrainingStopped(signalled, done, config.steps, written,
                                              self.run.path)
            self.finish_checkpoints()
        finally:
            self.bar.close()
            self.metrics.close()
        return self._finish()

    def log(self, step: int, output: StepOutput) -> None:
        """The record of a skipped step, or every ``log_every`` steps the metrics (where the
        loss and gradient norm are read from the device)."""
        config = self.config
        self._interval_tokens += self.tokens_per_step
        if output.skipped is not None:
            log.warning("step %d skipped: %s (%d skipped so far)", step, output.skipped,
                        self.guard.skipped_steps)
            self.metrics.write({"step": step, "skipped": output.skipped, **self.guard.state()})
            if self.guard.exhausted:
                raise NonFiniteTraining(self._diverged_message(step, output.skipped))
        elif config.log_every and (step % config.log_every == 0 or step == config.steps):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            self.throughput = self._interval_tokens / (now - self._interval_start)
            loss = output.loss.item()
            self.metrics.write({"step": step, "tokens": step * self.tokens_per_step,
                                "loss": loss, "lr": output.lr,
                                "grad_norm": output.grad_norm.item(),
                                "skipped_steps": self.guard.skipped_steps,
                                "tokens_per_s": self.throughput,
                                "elapsed_s": now - self._run_start})
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{self.throughput:,.0f}")
            self._interval_start, self._interval_tokens = now, 0

    def evaluate(self, final: bool = False) -> EvalResult:
        """The validation loss over every rank's windows: a sample of them, all when ``final``."""
        local = evaluate_perplexity(self.model,
                                    self.final_val_batches if final else self.val_batches,
                                    self.device, self.amp_dtype, loss=self.train_loss,
                                    allow_empty=self.dist.enabled)
        if not self.dist.enabled:
            return local
        total, tokens = self.dist.all_reduce([local.loss * local.tokens, float(local.tokens)])
        return nll_result(total, round(tokens))

    def checkpoint(self, step: int) -> Path:
        """Write the checkpoint of ``step`` (every rank takes part under torchrun)."""
        with self._resumable_on_failure():
            # Metrics up to this step reach the disk before a checkpoint says the step is done.
            self.metrics.sync()
            state = {"tokens": step * self.tokens_per_step,
                     "tokens_per_step": self.tokens_per_step, "world_size": self.world,
                     **self.guard.state()}
            if self.checkpointer is not None:
                return self.checkpointer.save(step, self.model, self.optimizer, self.scheduler,
                                              state)
            return save_checkpoint(self.run.checkpoints_dir, step, self.model, self.optimizer,
                                   self.scheduler, state, keep=self.config.keep_checkpoints)

    def finish_checkpoints(self) -> None:
        """Complete a sharded checkpoint still being written (``async_checkpoint``)."""
        if self.checkpointer is not None:
            with self._resumable_on_failure():
                self.checkpointer.finish()

    @contextlib.contextmanager
    def _resumable_on_failure(self) -> Iterator[None]:
        """A checkpoint that cannot be written (a full disk, say) ends the run with one line
        that names the last good checkpoint and how to resume from it."""
        try:
            yield
        # RuntimeError: torch.save's; CheckpointException: DCP's, raised on every rank
        except (OSError, RuntimeError, SafetensorError, CheckpointException) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            where = self._last_good("no checkpoint was written before it")
            raise DepthAttnError(f"writing a checkpoint into {self.run.checkpoints_dir} failed "
                                 f"({reason}); {where}. Resume with: depthattn train --resume "
                                 f"run_dir={self.run.path}") from error

    def _finish(self) -> RunResult:
        """The final evaluation (if no step was left to run), ``run_dir/model`` and
        summary.json."""
        if self.val is None:  # resumed a run that had already finished
            self.val = self.evaluate(final=True)
        if not self.dist.enabled:
            save_model(self.model, self.run.model_dir)
        else:
            state = full_model_state(self.model, self.dist)  # collective: every rank takes part
            if self.dist.is_main:
                save_model(model_from_state(self.model.config, state), self.run.model_dir)
        result = RunResult(self.run.path, self.config.steps, self.val, self.parameters,
                           self.throughput)
        if self.dist.is_main:
            write_json_atomic(self.run.summary_file, {
                "method": self.model_config.method,
                "method_options": self.model_config.method_options, "seed": self.config.seed,
                "steps": result.step, "world_size": self.world,
                "tokens": result.step * self.tokens_per_step,
                "num_parameters": result.num_parameters, "tokens_per_s": result.tokens_per_s,
                "skipped_steps": self.guard.skipped_steps, **result.val.as_dict()})
        self.dist.barrier()
        return result

    def _last_good(self, if_none: str) -> str:
        good = self.run.latest_checkpoint()
        return f"the last good checkpoint is {good}" if good is not None else if_none

    def _diverged_message(self, step: int, reason: str) -> str:
        where = self._last_good("no checkpoint was written yet")
        return (f"training stopped at step {step}: {self.guard.streak} steps in a row were "
                f"skipped (max_bad_steps {self.guard.max_bad_steps}; the last: {reason}); "
                f"{where}. Lower lr, raise warmup_ratio or check the data before resuming")


def _every(interval: int, step: int) -> bool:
    """Whether an every-``interval``-steps event falls on ``step`` (0: never)."""
    return bool(interval) and step % interval == 0


def _with_recompile_limit(compiled, graphs: int):
    """``compiled`` allowed ``graphs`` graphs: past Dynamo's recompile limit (8) a sampled-depth
    run would fall back to eager. The limit is global, so it is raised only during the calls."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    limit = max(graphs, getattr(config, name))

    def call(*args, **kwargs):
        with config.patch(**{name: limit}):
            return compiled(*args, **kwargs)

    return call
