"""Check a prepared folder before training reads it: every shard of the size and sha256 the
manifest lists, and the tokenizer folder the one the shards were built with.

A shard that was truncated by a full disk, altered by hand or swapped from another preparation
would otherwise train on the wrong tokens without a word (a truncated shard is caught on
opening; a same-sized altered one only by its checksum). Manifests written before shard
checksums existed are checked for sizes where they can be.
"""

from __future__ import annotations

from pathlib import Path

from depthattn.data.manifest import manifest_path, read_manifest
from depthattn.data.tokenizer import load_tokenizer, tokenizer_sha256
from depthattn.utils.errors import DepthAttnError
from depthattn.utils.file_manifest import sha256_file


def verify_shards(manifest: dict, root: Path, where: Path) -> None:
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            path = root / shard["file"]
            if not path.is_file():
                raise FileNotFoundError(f"{path} is listed in {where} ({split} split) but "
                                        f"missing; run `depthattn prepare` again")
            size = path.stat().st_size
            if "bytes" in shard and size != shard["bytes"]:
                raise DepthAttnError(f"{path} has {size} bytes, but {where} says {shard['bytes']}; "
                                 f"the shard is damaged or from another preparation: run "
                                 f"`depthattn prepare` again")
            if "sha256" in shard:
                actual = sha256_file(path)
                if actual != shard["sha256"]:
                    raise DepthAttnError(f"{path} has sha256 {actual[:16]}…, but {where} says "
                                     f"{shard['sha256'][:16]}…; the shard is damaged or from "
                                     f"another preparation: run `depthattn prepare` again")


def verify_tokenizer(manifest: dict, root: Path, where: Path) -> None:
    folder = root / manifest["tokenizer"]["path"]
    if not folder.exists():
        raise FileNotFoundError(f"the tokenizer {folder} named in {where} is missing; run "
                                f"`depthattn prepare` again")
    actual = tokenizer_sha256(load_tokenizer(folder))
    expected = manifest["tokenizer"]["sha256"]
    if actual != expected:
        raise DepthAttnError(f"the tokenizer in {folder} (sha256 {actual[:16]}…) is not the one the "
                         f"shards in {root} were built with (sha256 {expected[:16]}…, per "
                         f"{where}); restore that tokenizer or prepare the data again with this "
                         f"one")


def verify_prepared(path: str | Path) -> None:
    """Raise naming the first shard or tokenizer that does not match the manifest."""
    where = manifest_path(path)
    manifest = read_manifest(where)
    verify_shards(manifest, where.parent, where)
    verify_tokenizer(manifest, where.parent, where)
