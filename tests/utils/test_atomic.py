"""Atomic writes are durable (the file and its directory are fsynced before the write counts
as done) and a replaced folder is never lost; a checksummed folder names what changed."""

from __future__ import annotations

import os

import pytest

from depthattn.utils import atomic
from depthattn.utils.atomic import atomic_dir, write_text_atomic
from depthattn.utils.file_manifest import (
    CorruptFolder,
    verify_folder,
    write_file_manifest,
)


@pytest.fixture
def fsynced(monkeypatch):
    """The paths os.fsync was called on, in order."""
    calls: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return calls


def test_a_file_and_its_directory_are_fsynced(tmp_path, fsynced):
    write_text_atomic(tmp_path / "a.json", "{}")
    assert fsynced == [str(tmp_path / f"a.json.tmp-{os.getpid()}"), str(tmp_path)]
    assert (tmp_path / "a.json").read_text() == "{}"


def test_a_folder_is_fsynced_whole_before_it_is_renamed(tmp_path, fsynced):
    def write(staging):
        (staging / "sub").mkdir()
        (staging / "sub" / "x.bin").write_bytes(b"x")  # a plain write, not an atomic one
        (staging / "y.bin").write_bytes(b"y")

    atomic_dir(tmp_path / "ckpt", write)
    staging = tmp_path / f".ckpt.tmp-{os.getpid()}"
    assert {str(staging / "sub" / "x.bin"), str(staging / "y.bin"), str(staging / "sub"),
            str(staging)} <= set(fsynced[:-1])
    assert fsynced[-1] == str(tmp_path)  # the rename, last


def test_replacing_a_folder_keeps_the_old_one_until_the_new_one_is_in_place(tmp_path,
                                                                        monkeypatch):
    atomic_dir(tmp_path / "ckpt", lambda d: (d / "v").write_text("old"))

    def fail(staging):
        (staging / "v").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_dir(tmp_path / "ckpt", fail, replace=True)
    assert (tmp_path / "ckpt" / "v").read_text() == "old"
    real_replace = os.replace

    def failing_replace(source, target):  # the rename of the new folder fails
        if ".tmp-" in str(source):
            raise OSError("rename failed")
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        atomic_dir(tmp_path / "ckpt", lambda d: (d / "v").write_text("new"), replace=True)
    assert (tmp_path / "ckpt" / "v").read_text() == "old"
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    atomic_dir(tmp_path / "ckpt", lambda d: (d / "v").write_text("new"), replace=True)
    assert (tmp_path / "ckpt" / "v").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing left aside


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "a.bin").write_bytes(b"A" * 10), "has sha256"),
    (lambda d: (d / "a.bin").write_bytes(b"a" * 9), "has 9 bytes, the manifest says 10"),
    (lambda d: (d / "a.bin").unlink(), "a.bin is missing"),
    (lambda d: (d / "extra").write_text("?"), "extra is not listed"),
    (lambda d: (d / "manifest.json").write_text("{"), "is not valid JSON"),
])
def test_a_checksummed_folder_names_what_changed(tmp_path, damage, message):
    (tmp_path / "a.bin").write_bytes(b"a" * 10)
    (tmp_path / "b.json").write_text("{}")
    write_file_manifest(tmp_path)
    verify_folder(tmp_path)
    damage(tmp_path)
    with pytest.raises(CorruptFolder, match=message):
        verify_folder(tmp_path)
