"""The JSON manifest that describes a prepared token folder, and the checks made when reading it.

Layout of a prepared folder (all paths in the manifest are relative to it):

    manifest.json                      written last: its presence means "finished"
    tokenizer/tokenizer.json, ...      the tokenizer that produced the ids
    train-00000-<fingerprint>.npy      flat token ids, documents separated by EOS
    validation-00000-<fingerprint>.npy

Manifest fields: `format`/`version`; `source`; `tokenizer` {path, sha256, vocab_size,
eos_token_id}; `dtype` ("uint16" or "uint32"); `num_tokens` (all splits); `splits` {name ->
{num_tokens, num_documents, documents (names), shards [{file, num_tokens, num_documents}]}};
`request` (the arguments and input fingerprint that produced it, to recognise a rerun).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from depthattn.data.files import read_json
from depthattn.utils.atomic import write_json_atomic
from depthattn.utils.errors import DepthAttnError

MANIFEST_NAME = "manifest.json"
FORMAT = "depthattn-tokens"
VERSION = 1
PACK_VERSION = 1  # in text preparations' requests: bump when the shards of the same inputs change
MAX_LISTED_DOCUMENTS = 10_000  # a split lists its document names up to this many


def manifest_path(path: str | Path) -> Path:
    """Accept either a prepared folder or its manifest.json."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = manifest_path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no prepared data at {path}: run `depthattn prepare` first (a folder without "
            f"{MANIFEST_NAME} was never finished)")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DepthAttnError(
            f"{path} is not a {FORMAT} v{VERSION} manifest (format={manifest.get('format')!r}, "
            f"version={manifest.get('version')!r}); prepare the data again")
    return manifest


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(path, {"format": FORMAT, "version": VERSION, **manifest})


def check_tokenizer_hash(manifest: dict[str, Any], tokenizer_sha256: str, where: str = "") -> None:
    """Refuse shards whose ids come from another tokenizer than the one the model will use."""
    built_with = manifest["tokenizer"]["sha256"]
    if built_with != tokenizer_sha256:
        raise DepthAttnError(
            f"the shards{f' in {where}' if where else ''} were built with tokenizer sha256 "
            f"{built_with[:16]}…, but the tokenizer in use has sha256 {tokenizer_sha256[:16]}…; "
            f"prepare the data again with this tokenizer (or use the manifest's tokenizer, "
            f"{manifest['tokenizer']['path']!r})")


def check_split(manifest: dict[str, Any], split: str) -> dict[str, Any]:
    if split not in manifest["splits"]:
        raise DepthAttnError(
            f"unknown split {split!r}; this manifest has {sorted(manifest['splits'])}")
    return manifest["splits"][split]
