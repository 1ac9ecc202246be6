"""The default corpus's own preparation: its listed copies dropped, a grouped split, a BPE on the
training split, then the token shards and the manifest.

The corpus is a fixed 12.7 MB archive (`corpus`), so it is held in memory and prepared in one
process, and the copies that the datatrove engine would search for are a listed rule
(`corpus.EXACT_COPIES`, `corpus.NEAR_COPIES`, `corpus.GROUPS`). The split holds out whole groups
until `val_fraction` of the characters (`split.split_groups`). A shard's file name fingerprints
everything that makes its bytes (tokenizer, dtype, EOS id, the texts), so a shard that exists is
finished and a rerun keeps it; the manifest is written last.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from depthattn.data import corpus
from depthattn.data.clean import clean_text
from depthattn.data.files import read_json, remove_stale_temp_files, sha256_file
from depthattn.data.manifest import MANIFEST_NAME, PACK_VERSION
from depthattn.data.prepared import (
    TOKENIZER_DIR,
    TRAINING_RECORD,
    check_not_built_with_other,
    finish_prepared,
    is_prepared,
    store_given_tokenizer,
)
from depthattn.data.shards import finished_length
from depthattn.data.sources import Document
from depthattn.data.split import split_groups
from depthattn.data.tokenizer import (
    backend_json,
    check_vocab_fits,
    eos_token_id,
    load_tokenizer,
    save_tokenizer,
    token_dtype,
    tokenizer_sha256,
    tokenizer_vocab_size,
    train_bpe,
)
from depthattn.utils.atomic import atomic_dir, atomic_write, write_json_atomic
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)


def default_groups(near_duplicates: bool = True) -> list[list[Document]]:
    """The cleaned documents without their listed copies, in groups that go to one side of the
    split: groups in the order of their first document, members in archive (name) order."""
    dropped = corpus.EXACT_COPIES | (corpus.NEAR_COPIES if near_duplicates else {})
    group_of = {name: group[0] for group in (corpus.GROUPS if near_duplicates else ())
                for name in group}
    groups: dict[str, list[Document]] = {}
    for doc in corpus.load_default_corpus():
        if doc.name not in dropped:
            groups.setdefault(group_of.get(doc.name, doc.name), []).append(
                Document(doc.name, clean_text(doc.text)))
    return list(groups.values())


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def tokenizer_sample(train: list[Document], sample_chars: int) -> Iterator[str]:
    """The BPE's texts, in archive order: the whole training split if it has at most
    `sample_chars` characters; else documents drawn by their text hash with probability
    sample_chars / split size (spread over the split, the same on every run), the last one cut
    so that the sample has at most `sample_chars` characters."""
    docs = sorted(train, key=lambda d: d.name)
    total = sum(len(d.text) for d in docs)
    left = min(total, sample_chars)
    for doc in docs:
        draw = int.from_bytes(_sha256(doc.text)[:8], "little") / 2.0**64
        if left > 0 and (total <= sample_chars or draw < sample_chars / total):
            yield doc.text[:left]
            left -= min(len(doc.text), left)


def _trained_tokenizer(out_dir: Path, train: list[Document], vocab_size: int, sample_chars: int,
                       progress: bool):
    """Train the BPE on (a sample of) the training split, never on validation, or reuse the one
    trained before on the same documents."""
    folder = out_dir / TOKENIZER_DIR
    record: dict[str, Any] = {"vocab_size": vocab_size, "train_documents_sha256": hashlib.sha256(
        b"".join(_sha256(d.text) for d in train)).hexdigest()}
    if sum(len(d.text) for d in train) > sample_chars:  # (absent when the sample is everything)
        record["sample_chars"] = sample_chars
    if folder.exists():
        stored = read_json(folder / TRAINING_RECORD) if (folder / TRAINING_RECORD).exists() \
            else None
        if stored != record:
            raise DepthAttnError(
                f"{folder} holds a tokenizer made for other inputs "
                f"({stored or 'not trained here'}); this run would train one with {record}; use "
                f"another out_dir or delete {out_dir}")
        return load_tokenizer(folder)
    logger.info("training a byte-level BPE (vocab_size %d) on %d training documents",
                vocab_size, len(train))
    tokenizer = train_bpe(tokenizer_sample(train, sample_chars), vocab_size, progress=progress)

    def write(staging: Path) -> None:
        save_tokenizer(tokenizer, staging)
        write_json_atomic(staging / TRAINING_RECORD, record)

    atomic_dir(folder, write)  # the folder appears complete or not at all
    return tokenizer


def _shards(split: str, docs: list[Document], shard_chars: int, fingerprint: str
            ) -> dict[str, list[Document]]:
    """{file name: documents}: consecutive documents until a shard has `shard_chars`
    characters; the name ends in a hash of `fingerprint` and the shard's texts."""
    groups: list[list[Document]] = []
    size = shard_chars  # a new shard for the first document
    for doc in docs:
        if size >= shard_chars:
            groups.append([])
            size = 0
        groups[-1].append(doc)
        size += len(doc.text)
    named = {}
    for index, members in enumerate(groups):
        h = hashlib.sha256(fingerprint.encode())
        for doc in members:
            h.update(_sha256(doc.text).hex().encode())
        named[f"{split}-{index:05d}-{h.hexdigest()[:16]}.npy"] = members
    return named


def _write_shard(path: Path, docs: list[Document], backend: Tokenizer, eos: int,
                 dtype: np.dtype, bar: tqdm) -> None:
    """Each document's ids, then EOS (no BOS/EOS from a post-processor: placed here)."""
    parts = []
    for enc in backend.encode_batch_fast([d.text for d in docs], add_special_tokens=False):
        parts += [np.asarray(enc.ids, dtype=dtype), np.array([eos], dtype=dtype)]
    bar.update(len(docs))
    tokens = np.concatenate(parts)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
            np.save(f, tokens, allow_pickle=False)

    atomic_write(path, write)


def prepare_default_corpus(out_dir: Path, given, request: dict[str, Any], near_duplicates: bool,
                           model_vocab_size: int | None, progress: bool,
                           started: float) -> Path:
    """Prepare the default corpus into out_dir for `request` (built and checked by `prepare`),
    with the `given` tokenizer or a BPE trained as `request["tokenizer"]` says."""
    manifest_file = out_dir / MANIFEST_NAME
    if given is not None and manifest_file.exists():
        check_not_built_with_other(out_dir, request["tokenizer"]["sha256"], "the given tokenizer")
    if is_prepared(out_dir, request):
        return manifest_file
    groups = default_groups(near_duplicates)
    train, val = split_groups(groups, request["val_fraction"], request["seed"])
    logger.info("%d documents: %d train, %d validation", len(train) + len(val), len(train),
                len(val))
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temp_files(out_dir):
        logger.info("removed %s, left by an interrupted run", path.name)

    if given is None:
        tok = _trained_tokenizer(out_dir, train, request["tokenizer"]["train_vocab_size"],
                                 request["tokenizer"]["sample_chars"], progress)
    else:
        store_given_tokenizer(out_dir, given)
        tok = given
    sha = tokenizer_sha256(tok)
    check_not_built_with_other(out_dir, sha, "this run's tokenizer")
    vocab = max(tokenizer_vocab_size(tok), max(tok.get_vocab().values()) + 1)
    if model_vocab_size is not None:
        check_vocab_fits(vocab, model_vocab_size)
    eos, dtype = eos_token_id(tok), token_dtype(vocab)

    backend = Tokenizer.from_str(backend_json(tok))
    fingerprint = f"{PACK_VERSION}:{sha}:{dtype.name}:{eos}"
    splits = {}
    with tqdm(total=len(train) + len(val), unit="doc", desc="tokenizing",
              disable=not progress) as bar:
        for split, docs in (("train", train), ("validation", val)):
            shards = _shards(split, docs, request["shard_chars"], fingerprint)
            for name, members in shards.items():
                if finished_length(out_dir / name, dtype) is None:
                    _write_shard(out_dir / name, members, backend, eos, dtype, bar)
            splits[split] = _split_entry(out_dir, docs, shards, dtype)
    return finish_prepared(out_dir, manifest_file, request["source"],
                           {"sha256": sha, "vocab_size": vocab, "eos_token_id": eos}, dtype.name,
                           splits, request, started,
                           {name for s in splits.values() for name in
                            (shard["file"] for shard in s["shards"])})


def _split_entry(out_dir: Path, docs: list[Document], shards: dict[str, list[Document]],
                 dtype: np.dtype) -> dict[str, Any]:
    """A split of the manifest: counts, document names, and each shard's size and sha256
    (training checks them before it starts)."""
    listed = [{"file": name, "num_tokens": finished_length(out_dir / name, dtype),
               "num_documents": len(members), "bytes": (out_dir / name).stat().st_size,
               "sha256": sha256_file(out_dir / name)} for name, members in shards.items()]
    return {"num_tokens": sum(s["num_tokens"] for s in listed), "num_documents": len(docs),
            "num_characters": sum(len(d.text) for d in docs),
            "documents": [d.name for d in docs], "shards": listed}
