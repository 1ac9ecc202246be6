"""Data pipeline: default corpus, tokenizer, token shards, and batch loaders.

    from depthattn.data import prepare, TokenStream, TrainBatches, ValidationBatches
    manifest = prepare("default")                       # or a local file / folder
    train = TrainBatches(TokenStream(manifest, "train"), seq_len=256, batch_size=32, seed=0)
    inputs, targets = train.batch(step)                 # (B, T) int64 each
"""

from depthattn.data.files import cache_dir
from depthattn.data.loader import (
    IGNORE_INDEX,
    TrainBatches,
    ValidationBatches,
    check_seq_len,
)
from depthattn.data.manifest import check_tokenizer_hash, read_manifest
from depthattn.data.pipeline import default_out_dir, prepare
from depthattn.data.resolve import find_prepared, resolve_data
from depthattn.data.shards import TokenStream
from depthattn.data.tokenizer import (
    EOS_TOKEN,
    check_vocab_fits,
    load_tokenizer,
    tokenizer_sha256,
    train_bpe,
)

__all__ = ["EOS_TOKEN", "IGNORE_INDEX", "TokenStream", "TrainBatches", "ValidationBatches",
           "cache_dir", "check_seq_len", "check_tokenizer_hash", "check_vocab_fits",
           "default_out_dir", "find_prepared", "load_tokenizer", "prepare", "read_manifest",
           "resolve_data", "tokenizer_sha256",
           "train_bpe"]
