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
from depthattn.io import load_any
from depthattn.ops.kv_quant import check_kv_format
from depthattn.train.run_dir import RunDir
from depthattn.utils.checks import require_int
from depthattn.utils.devices import autocast_dtype, resolve_device


def load_for_eval(path: str | Path, data: str | None = None, seq_len: int | None = None,
                  windows: int = 0, batch_size: int = 8, device: str = "auto"):
    """The model at ``path`` and its validation batches: ``(model, batches, device, amp,
    seq_len)``, as `depthattn eval` uses them."""
    path = Path(path)
    run = RunDir(path)
    run_config = run.read_config() if run.is_run() else {}
    require_int("windows", windows, 0)
    require_int("batch_size", batch_size, 1)
    if data is None:
        manifest = run.data_manifest(prepare=True)
        if manifest is None:
            raise ValueError(f"{path} is not a training run: pass --data (a prepared folder)")
        data = str(manifest)
    seq_len = seq_len or run_config.get("seq_len", 256)
    device = resolve_device(device)
    model = load_any(path, device=device)
    stream = TokenStream(data, "validation")
    check_vocab_fits(stream.vocab_size, model.config.vocab_size)
    batches = ValidationBatches(stream, seq_len, batch_size, max_windows=windows or None,
                                max_seq_len=model.config.max_seq_len)
    return model, batches, device, autocast_dtype("auto", device), seq_len


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
    model, batches, device, amp, seq_len = load_for_eval(path, data, seq_len, windows,
                                                         batch_size, device)
    result = evaluate_loaded(model, batches, device, amp, kv_cache, prefill_chunk)
    how = "" if kv_cache is None else (f", through a {kv_cache} KV cache in chunks of "
                                       f"{prefill_chunk}")
    print(f"{path}: validation loss {result.loss:.4f}, perplexity {result.perplexity:.3f} over "
          f"{result.tokens:,} tokens (seq_len {seq_len}, method {model.config.method}{how})")
    return result
