"""`depthattn eval PATH`: validation perplexity of a run, a model folder or a Qwen3 folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from depthattn.data.loader import ValidationBatches
from depthattn.data.shards import TokenStream
from depthattn.data.tokenizer import check_vocab_fits
from depthattn.eval.perplexity import EvalResult, evaluate_perplexity
from depthattn.serialization import load_any


def evaluate_path(path: str | Path, data: str | None = None, seq_len: int | None = None,
                  windows: int = 0, batch_size: int = 8, device: str = "auto") -> EvalResult:
    path = Path(path)
    run_config_file = path / "train_config.json"
    run_config = json.loads(run_config_file.read_text()) if run_config_file.is_file() else {}
    if data is None:
        if "data" not in run_config:
            raise ValueError(f"{path} is not a training run: pass --data (a prepared folder)")
        from depthattn.train.config import TrainConfig
        from depthattn.train.data import resolve_data

        data = str(resolve_data(TrainConfig(**run_config)))
    seq_len = seq_len or run_config.get("seq_len", 256)
    if windows < 0 or batch_size < 1:
        raise ValueError(f"windows ({windows}) must be >= 0 and batch_size ({batch_size}) >= 1")
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                          else "cpu" if device == "auto" else device)
    model = load_any(path, device=device)
    stream = TokenStream(data, "validation")
    check_vocab_fits(stream.vocab_size, model.config.vocab_size)
    batches = ValidationBatches(stream, seq_len, batch_size, max_windows=windows or None,
                                max_seq_len=model.config.max_seq_len)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    result = evaluate_perplexity(model, batches, device, autocast, progress=True)
    print(f"{path}: validation loss {result.loss:.4f}, perplexity {result.perplexity:.3f} over "
          f"{result.tokens:,} tokens (seq_len {seq_len}, method {model.config.method})")
    return result
