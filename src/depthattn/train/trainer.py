"""The training loop: data → model → AdamW with warmup + cosine → metrics, evaluation and
atomic checkpoints; ``resume=True`` continues a run exactly (same batches, same losses)."""

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

from depthattn.data.files import write_json_atomic
from depthattn.data.loader import IGNORE_INDEX, TrainBatches, ValidationBatches
from depthattn.data.shards import TokenStream
from depthattn.data.tokenizer import check_vocab_fits
from depthattn.eval.perplexity import EvalResult, evaluate_perplexity
from depthattn.model.transformer import CausalLM
from depthattn.serialization import save_model
from depthattn.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from depthattn.train.config import TrainConfig
from depthattn.train.data import resolve_data
from depthattn.train.metrics import MetricsLog
from depthattn.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
SUMMARY_FILE = "summary.json"
# Fields that may change when a run is resumed; any other difference is refused.
RESUMABLE_CHANGES = {"progress", "tensorboard", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "device"}


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    step: int
    val: EvalResult
    num_parameters: int
    tokens_per_s: float


def _device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.dtype == "bfloat16" or (config.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _check_run_dir(run_dir: Path, config: TrainConfig, resume: bool) -> None:
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.exists():
        return
    if not resume:
        raise ValueError(f"run_dir {run_dir} already holds a run; pass resume (--resume) to "
                         f"continue it, or choose another run_dir")
    saved = json.loads(saved_path.read_text())
    changed = sorted(k for k, v in config.to_dict().items()
                     if k not in RESUMABLE_CHANGES and saved.get(k) != v)
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise ValueError(f"cannot resume {run_dir} with a different configuration ({diffs}); "
                         f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change")


def train(config: TrainConfig, resume: bool = False) -> RunResult:
    """Train one run into ``config.run_dir``; returns the final validation result."""
    run_dir = Path(config.run_dir)
    device = _device(config)
    autocast_dtype = _autocast_dtype(config, device)
    # --- every check before any work ---
    _check_run_dir(run_dir, config, resume)
    manifest = resolve_data(config)
    train_stream = TokenStream(manifest, "train")
    val_stream = TokenStream(manifest, "validation")
    model_config = config.model_config(vocab_size=train_stream.vocab_size)
    check_vocab_fits(train_stream.vocab_size, model_config.vocab_size)
    accumulation = config.grad_accumulation
    batches = TrainBatches(train_stream, config.seq_len, config.micro_batch_size * accumulation,
                           seed=config.seed, max_seq_len=model_config.max_seq_len)
    # Intermediate evaluations may use a sample of windows; the final one reads the whole split.
    val_batches = ValidationBatches(val_stream, config.seq_len, config.micro_batch_size,
                                    max_windows=config.eval_windows or None,
                                    max_seq_len=model_config.max_seq_len)
    final_val_batches = ValidationBatches(val_stream, config.seq_len, config.micro_batch_size,
                                          max_seq_len=model_config.max_seq_len)

    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / CONFIG_FILE)
    model_config.save(run_dir / "model_config.json")
    torch.manual_seed(config.seed)
    model = CausalLM(model_config).to(device)
    model.model.activation_checkpointing = config.activation_checkpointing
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    start_step = 0
    checkpoint = latest_checkpoint(run_dir / "checkpoints") if resume else None
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, model, optimizer, scheduler)["step"]
    # Training goes through CausalLM.loss (chunked cross-entropy: no full logits); evaluation
    # through forward. Compiling the bound method compiles the whole loss, decoder included.
    forward = torch.compile(model) if config.compile else model
    train_loss = torch.compile(model.loss) if config.compile else model.loss
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    metrics = MetricsLog(run_dir, resume_step=start_step if resume else None,
                         tensorboard=config.tensorboard)
    num_params = model.num_parameters()
    log.info("%s: %s on %s, %s parameters, %d steps x %d tokens", run_dir, model_config.method,
             device, f"{num_params:,}", config.steps, config.tokens_per_step)

    def evaluate(final: bool = False) -> EvalResult:
        return evaluate_perplexity(forward, final_val_batches if final else val_batches, device,
                                   autocast_dtype)

    model.train()
    val: EvalResult | None = None
    interval_start, interval_tokens, throughput = time.perf_counter(), 0, 0.0
    run_start = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start_step, desc=f"train {model_config.method}",
               disable=not config.progress, dynamic_ncols=True)
    try:
        for step in range(start_step, config.steps):
            inputs, targets = batches.batch(step)
            step_loss = 0.0
            for micro_inputs, micro_targets in zip(inputs.chunk(accumulation),
                                                   targets.chunk(accumulation)):
                with autocast:
                    loss = train_loss(micro_inputs.to(device), micro_targets.to(device),
                                      ignore_index=IGNORE_INDEX) / accumulation
                loss.backward()
                step_loss += loss.item()
            max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            interval_tokens += config.tokens_per_step
            last = done == config.steps
            bar.update(1)
            if config.log_every and (done % config.log_every == 0 or last):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                throughput = interval_tokens / (now - interval_start)
                metrics.write({"step": done, "tokens": done * config.tokens_per_step,
                               "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                               "tokens_per_s": throughput, "elapsed_s": now - run_start})
                bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{throughput:,.0f}")
                interval_start, interval_tokens = now, 0
            if last or (config.eval_every and done % config.eval_every == 0):
                val = evaluate(final=last)
                metrics.write({"step": done, **val.as_dict()})
            if last or (config.checkpoint_every and done % config.checkpoint_every == 0):
                save_checkpoint(run_dir / "checkpoints", done, model, optimizer, scheduler,
                                {"tokens": done * config.tokens_per_step},
                                keep=config.keep_checkpoints)
    finally:
        bar.close()
        metrics.close()
    if val is None:  # resumed a run that had already finished
        val = evaluate(final=True)
    save_model(model, run_dir / "model")
    result = RunResult(run_dir, config.steps, val, num_params, throughput)
    write_json_atomic(run_dir / SUMMARY_FILE, _summary(result, config, model_config))
    return result


def _summary(result: RunResult, config: TrainConfig, model_config: Any) -> dict[str, Any]:
    return {"method": model_config.method, "method_options": model_config.method_options,
            "seed": config.seed, "steps": result.step,
            "tokens": result.step * config.tokens_per_step,
            "num_parameters": result.num_parameters, "tokens_per_s": result.tokens_per_s,
            **result.val.as_dict()}
