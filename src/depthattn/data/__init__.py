"""Data pipeline: default corpus, tokenizer, token shards, and batch loaders.

    from depthattn.data import prepare, TokenStream, TrainBatches, ValidationBatches
    manifest = prepare("default")                       # or a local file / folder
    train = TrainBatches(TokenStream(manifest, "train"), seq_len=256, batch_size=32, seed=0)
    inputs, targets = train.batch(step)                 # (B, T) int64 each

The names load on first use: the tokenizer module imports transformers (seconds), which
neither ``import depthattn.data.defaults`` nor ``depthattn --help`` should pay.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "cache_dir": "prepared",
    "IGNORE_INDEX": "loader", "TrainBatches": "loader", "ValidationBatches": "loader",
    "check_seq_len": "loader",
    "check_tokenizer_hash": "prepared", "read_manifest": "prepared",
    "default_out_dir": "prepare_text", "prepare": "prepare_text",
    "find_prepared": "prepare_text", "resolve_data": "prepare_text",
    "TokenStream": "shards",
    "EOS_TOKEN": "tokenizer", "check_vocab_fits": "tokenizer", "load_tokenizer": "tokenizer",
    "tokenizer_sha256": "tokenizer", "train_bpe": "tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"depthattn.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'depthattn.data' has no attribute {name!r}")


__all__ = sorted(_LAZY)
