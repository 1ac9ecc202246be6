"""`depthattn eval PATH`: validation perplexity of a run, a model folder or a Qwen3 folder."""

from __future__ import annotations

from pathlib import Path

from depthattn.data.loader import ValidationBatches
from depthattn.data.shards import TokenStream
from depthattn.data.tokenizer import check_vocab_fits
from depthattn.eval.perplexity import (
    EvalResult,
    evaluate_perplexity,
    evaluate_perplexity_cached,
)
from depthattn.io import folder_kind, load_model
from depthattn.model.decoder import CausalLM
from depthattn.ops.kv_quant import check_kv_format
from depthattn.train.run_dir import RunDir
from depthattn.utils.checks import require_int
from depthattn.utils.devices import autocast_dtype, resolve_device
from depthattn.utils.errors import DepthAttnError


def eval_data(path: str | Path, data: str | None = None,
              seq_len: int | None = None) -> tuple[str, int]:
    """The prepared data and sequence length to evaluate ``path`` on: those given, else the
    training run's (its data prepared now if missing; seq_len 256 for a model folder). The
    path is checked first, so a folder no loader reads fails before any data is prepared."""
    folder_kind(path)
    run = RunDir(path)
    if data is None:
        manifest = run.data_manifest(prepare=True)
        if manifest is None:
            raise DepthAttnError(f"{path} is not a training run: pass --data (a prepared folder)")
        data = str(manifest)
    run_config = run.read_config() if run.is_run() else {}
    return data, seq_len or run_config.get("seq_len", 256)


def validation_batches(model: CausalLM, data: str, seq_len: int, windows: int = 0,
                       batch_size: int = 8) -> ValidationBatches:
    """The validation split of ``data`` in windows of ``seq_len`` tokens (``windows`` of them;
    0: all), checked against the model's vocabulary and length."""
    stream = TokenStream(data, "validation")
    check_vocab_fits(stream.vocab_size, model.config.vocab_size)
    return ValidationBatches(stream, seq_len, batch_size, max_windows=windows or None,
                             max_seq_len=model.config.max_seq_len)


def evaluate_loaded(model, batches, device, amp, kv_cache: str | None = None,
                    prefill_chunk: int = 32) -> EvalResult:
    """Validation loss of a loaded model, directly or through a ``kv_cache`` format."""
    if kv_cache is None:
        return evaluate_perplexity(model, batches, device, amp, progress=True)
    return evaluate_perplexity_cached(model, batches, kv_cache, prefill_chunk, device, amp,
                                      progress=True)


def evaluate_path(path: str | Path, data: str | None = None, seq_len: int | None = None,
                  windows: int = 0, batch_size: int = 8, device: str = "auto",
                  kv_cache: str | None = None, prefill_chunk: int = 32) -> EvalResult:
    """Validation loss of ``path``; ``kv_cache`` (a storage format) evaluates through a KV cache
    in that format, ``prefill_chunk`` tokens per forward call."""
    check_kv_format(kv_cache)
    require_int("prefill_chunk", prefill_chunk, 1)
    require_int("windows", windows, 0)
    require_int("batch_size", batch_size, 1)
    data, seq_len = eval_data(path, data, seq_len)
    device = resolve_device(device)
    model = load_model(path, device=device)
    batches = validation_batches(model, data, seq_len, windows, batch_size)
    result = evaluate_loaded(model, batches, device, autocast_dtype("auto", device), kv_cache,
                             prefill_chunk)
    how = "" if kv_cache is None else (f", through a {kv_cache} KV cache in chunks of "
                                       f"{prefill_chunk}")
    print(f"{path}: validation loss {result.loss:.4f}, perplexity {result.perplexity:.3f} over "
          f"{result.tokens:,} tokens (seq_len {seq_len}, method {model.config.method}{how})")
    return result
