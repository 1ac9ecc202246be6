"""Pre-tokenized inputs (`import_tokens`): round trip by whole documents, checks before writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from depthattn.data import TokenStream
from depthattn.data.prepared import verify_prepared
from depthattn.data.token_import import import_tokens
from depthattn.data.tokenizer import save_tokenizer, train_bpe
from tests.conftest import make_text

VOCAB = 300


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """(tokenizer.json, its EOS id) of a small trained BPE."""
    tok = train_bpe([make_text(i, 200) for i in range(4)], VOCAB)
    path = save_tokenizer(tok, tmp_path_factory.mktemp("tok"))
    return path, int(tok.eos_token_id)


def documents(eos: int, n: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [i for i in range(VOCAB - 10) if i != eos]
    return [rng.choice(ids, int(rng.integers(1, 200))).astype(np.uint16) for _ in range(n)]


def flat(docs: list[np.ndarray], eos: int, dtype=np.uint16) -> np.ndarray:
    return np.concatenate([np.r_[d, eos] for d in docs]).astype(dtype)


def read_documents(manifest: Path, split: str, eos: int) -> list[list[int]]:
    stream = TokenStream(manifest, split)
    tokens = stream.read(0, len(stream))
    assert tokens[-1] == eos
    return [d.tolist() for d in np.split(tokens[:-1], np.flatnonzero(tokens[:-1] == eos))]


def strip(doc: list[int], eos: int) -> list[int]:
    return doc[1:] if doc and doc[0] == eos else doc


def assert_round_trip(manifest: Path, docs: list[np.ndarray], eos: int) -> None:
    train = [strip(d, eos) for d in read_documents(manifest, "train", eos)]
    val = [strip(d, eos) for d in read_documents(manifest, "validation", eos)]
    assert train and val
    expected = [d.tolist() for d in docs]
    # whole documents, each on one side, in input order within a side
    assert sorted(train + val) == sorted(expected)
    assert train == [d for d in expected if d in train]
    assert not {tuple(d) for d in train} & {tuple(d) for d in val}
    verify_prepared(manifest)


def test_npy_round_trips_by_document(tokenizer, tmp_path):
    path, eos = tokenizer
    docs = documents(eos)
    np.save(tmp_path / "ids.npy", flat(docs, eos, np.uint32))
    manifest = import_tokens([tmp_path / "ids.npy"], path, tmp_path / "out", val_fraction=0.2,
                             progress=False)
    assert_round_trip(manifest, docs, eos)
    assert TokenStream(manifest, "train").dtype == np.uint16  # the vocabulary fits
    assert TokenStream(manifest, "validation").manifest["splits"]["validation"][
        "num_documents"] == 8


def test_bin_round_trips_across_shards_and_reruns_do_nothing(tokenizer, tmp_path):
    path, eos = tokenizer
    docs = documents(eos, n=60, seed=1)
    tokens = flat(docs, eos)[:-1]  # no trailing EOS: the last document ends the file
    tokens.tofile(tmp_path / "train.bin")
    kwargs = {"val_fraction": 0.1, "shard_tokens": 500, "progress": False}
    manifest = import_tokens([tmp_path / "train.bin"], path, tmp_path / "out", **kwargs)
    assert len(TokenStream(manifest, "train").shards) > 3
    assert_round_trip(manifest, docs, eos)
    before = manifest.stat().st_mtime_ns
    assert import_tokens([tmp_path / "train.bin"], path, tmp_path / "out", **kwargs) == manifest
    assert manifest.stat().st_mtime_ns == before


def test_split_is_deterministic_by_seed(tokenizer, tmp_path):
    path, eos = tokenizer
    np.save(tmp_path / "ids.npy", flat(documents(eos), eos))
    val = [read_documents(import_tokens([tmp_path / "ids.npy"], path, tmp_path / f"o{i}",
                                        seed=s, val_fraction=0.2, progress=False),
                          "validation", eos) for i, s in enumerate((0, 0, 1))]
    assert val[0] == val[1] != val[2]


def test_split_by_files(tokenizer, tmp_path):
    path, eos = tokenizer
    files = []
    for i in range(5):
        np.save(tmp_path / f"part{i}.npy", flat(documents(eos, n=4, seed=10 + i), eos))
        files.append(tmp_path / f"part{i}.npy")
    manifest = import_tokens(files, path, tmp_path / "out", val_fraction=0.2,
                             split_by="files", progress=False)
    val = TokenStream(manifest, "validation").manifest["splits"]["validation"]["documents"]
    assert len({name.split(":")[0] for name in val}) == 1 and len(val) == 4


def test_datasets_folder_round_trips(tokenizer, tmp_path):
    datasets = pytest.importorskip("datasets")
    path, eos = tokenizer
    docs = documents(eos, n=30, seed=2)
    rows = [d.tolist() + ([eos] if i % 2 else []) for i, d in enumerate(docs)]  # either form
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("uint16"))})
    datasets.Dataset.from_dict({"input_ids": rows}, features=features).save_to_disk(
        str(tmp_path / "ds"))
    manifest = import_tokens([tmp_path / "ds"], path, tmp_path / "out", val_fraction=0.2,
                             progress=False)
    assert_round_trip(manifest, docs, eos)


def test_id_beyond_the_vocabulary_is_refused_before_writing(tokenizer, tmp_path):
    path, eos = tokenizer
    tokens = flat(documents(eos), eos)
    tokens[5] = 4000
    np.save(tmp_path / "ids.npy", tokens)
    with pytest.raises(ValueError, match=r"token id 4000, but the tokenizer has 300 tokens"):
        import_tokens([tmp_path / "ids.npy"], path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_tokenizer_with_another_eos_is_refused(tokenizer, tmp_path):
    path, eos = tokenizer
    np.save(tmp_path / "ids.npy", flat(documents(eos), eos))
    with pytest.raises(ValueError, match=rf"with id 7 \(--eos-id\), but the tokenizer's EOS "
                                         rf"token '<\|endoftext\|>' has id {eos}"):
        import_tokens([tmp_path / "ids.npy"], path, tmp_path / "out", eos_id=7, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("make", "kwargs", "message"), [
    (lambda d: np.save(d / "x.npy", np.arange(10, dtype=np.int64)), {},
     r"holds int64\(10,\); a token file must be 1-D uint16 or uint32"),
    (lambda d: np.arange(10, dtype=np.uint16).tofile(d / "x.bin"), {"dtype": "int8"},
     r"token dtype 'int8' is not supported; allowed: uint16, uint32"),
    (lambda d: (d / "x.bin").write_bytes(b"\x01\x00\x02"), {},
     r"has 3 bytes, not a multiple of 2 \(uint16\)"),
    (lambda d: (d / "x.bin").write_bytes(b""), {}, r"holds no tokens"),
    (lambda d: np.save(d / "x.npy", np.zeros(0, np.uint16)), {}, r"holds no tokens"),
    (lambda d: (d / "x.txt").write_text("hello"), {}, r"unknown token file type '.txt'"),
])
def test_bad_input_gets_one_clear_error(tokenizer, tmp_path, make, kwargs, message):
    path, _ = tokenizer
    make(tmp_path)
    (name,) = [p for p in tmp_path.iterdir() if p.name.startswith("x")]
    with pytest.raises(ValueError, match=message):
        import_tokens([name], path, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_only_eos_ids_is_no_document(tokenizer, tmp_path):
    path, eos = tokenizer
    np.save(tmp_path / "x.npy", np.full(5, eos, np.uint16))
    with pytest.raises(ValueError, match=rf"holds no documents \(only EOS ids {eos}"):
        import_tokens([tmp_path / "x.npy"], path, tmp_path / "out", progress=False)


def test_files_without_the_tokenizers_eos_are_refused_with_the_likely_separator(tokenizer,
                                                                                 tmp_path):
    """Ids made by another tokenizer fit the vocabulary here, but its separator (5) is not ours:
    without the check every file would quietly become one document."""
    path, eos = tokenizer
    other_eos = 5 if eos != 5 else 6
    docs = [d[d != other_eos] for d in documents(eos)]
    for i in range(3):
        np.save(tmp_path / f"p{i}.npy", flat(docs[i::3], other_eos))
    files = [tmp_path / f"p{i}.npy" for i in range(3)]
    total = sum(len(np.load(f)) for f in files)
    with pytest.raises(ValueError, match=rf"none of the {total} ids in the token files is the "
                                         rf"tokenizer's EOS id {eos}.* the most frequent id in "
                                         rf"p0.npy is {other_eos} "):
        import_tokens(files, path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # one file that ends its single document with our EOS is fine
    np.save(tmp_path / "one.npy", np.r_[docs[0], eos].astype(np.uint16))
    import_tokens([*files, tmp_path / "one.npy"], path, tmp_path / "ok", split_by="files",
                  val_fraction=0.3, progress=False)


def test_a_model_too_small_for_the_tokenizer_is_refused_before_reading(tokenizer, tmp_path):
    path, eos = tokenizer
    np.save(tmp_path / "ids.npy", flat(documents(eos), eos))
    with pytest.raises(ValueError, match=r"the tokenizer has 300 tokens .* the model's "
                                         r"vocab_size is 256"):
        import_tokens([tmp_path / "ids.npy"], path, tmp_path / "out", model_vocab_size=256,
                      progress=False)
    assert not (tmp_path / "out").exists()
