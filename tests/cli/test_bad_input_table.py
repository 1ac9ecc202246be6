"""Every row of the table of bad inputs in docs/reliability.md ("Bad inputs") is run as
written, in a scratch folder prepared for it: the command must fail with exit status 2 before
any training, and its error must contain the row's excerpt, where "…" stands for any text.
A row without a setup here, or a setup without a row, fails the suite, so the table and the
tests cannot drift apart."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from depthattn.cli import main

README = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
SECTION = "## Bad inputs"
TINY = dict(hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
            head_dim=8)


def table_rows() -> list[tuple[int, str, str]]:
    """(number, command, excerpt) of each row of the table in that section."""
    text = README.read_text(encoding="utf-8")
    if SECTION not in text:
        return []  # the count test below then fails, naming the section
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[2].strip("`"), cells[3].strip("`")))
    return rows


# --- what each row needs in its scratch folder ---------------------------------------------

SETUPS: dict[int, Callable[[Path, Path], None]] = {}


def setup(*numbers: int):
    def register(function):
        for number in numbers:
            SETUPS[number] = function
        return function
    return register


def nothing(folder: Path, prepared: Path) -> None:
    pass


for _number in (1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 23, 27, 37, 38):
    SETUPS[_number] = nothing


# rows that need one small file: row -> (name, bytes)
FILES = {
    2: ("typo.toml", b"warmup = 0.1\n"),
    20: ("notes.txt", b"steps = 3\n"),
    21: ("broken.toml", b"steps = = 3\n"),
    22: ("latin1.toml", "# café\nsteps = 3\n".encode("latin-1")),
    24: ("empty.txt", b"\n\n  \n"),
    25: ("latin1.txt", "Ophélie sings.\n".encode("latin-1")),
    26: ("corpus.txt", b"To be, or not to be.\n"),
}


def _writes(name: str, data: bytes) -> Callable[[Path, Path], None]:
    def write(folder: Path, prepared: Path) -> None:
        (folder / name).write_bytes(data)
    return write


for _number, (_name, _data) in FILES.items():
    SETUPS[_number] = _writes(_name, _data)


def copy_prepared(folder: Path, prepared: Path) -> Path:
    return Path(shutil.copytree(prepared, folder / "prepared"))


@setup(18, 30, 36)
def prepared_data(folder, prepared):
    copy_prepared(folder, prepared)


@setup(28)
def swapped_tokenizer(folder, prepared):
    from depthattn.data import train_bpe

    target = copy_prepared(folder, prepared) / "tokenizer"
    shutil.rmtree(target)
    train_bpe(["another corpus entirely " * 30], vocab_size=270).save_pretrained(str(target))


@setup(29)
def damaged_shard(folder, prepared):
    target = copy_prepared(folder, prepared)
    shard = json.loads((target / "manifest.json").read_text())["splits"]["train"]["shards"][0]
    path = target / shard["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@setup(31)
def something_else(folder, prepared):
    copy_prepared(folder, prepared)
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text("buy milk\n")


def tiny_run(folder: Path, prepared: Path, run_dir: str = "run", **fields) -> Path:
    from depthattn.train import TrainConfig, train

    if not (folder / "prepared").exists():
        copy_prepared(folder, prepared)
    base = dict(run_dir=run_dir, data="prepared",  # relative to the folder, the cwd
                model_overrides=TINY, method="depth_attention", seq_len=32, micro_batch_size=4,
                steps=10, lr=5e-3, log_every=5, eval_every=0, eval_windows=4,
                checkpoint_every=10, progress=False, tensorboard=False)
    return folder / train(TrainConfig(**{**base, **fields})).run_dir


@setup(32, 33)
def a_finished_run(folder, prepared):
    tiny_run(folder, prepared)


@setup(34)
def another_models_checkpoint(folder, prepared):
    mine = tiny_run(folder, prepared)
    other = tiny_run(folder, prepared, "other", method="vanilla",
                     model_overrides={**TINY, "num_layers": 2})
    (mine / "summary.json").unlink()
    shutil.rmtree(mine / "checkpoints" / "step_0000010")
    shutil.copytree(other / "checkpoints" / "step_0000010", mine / "checkpoints" / "step_0000010")


@setup(35)
def crafted_pickle(folder, prepared):
    import torch

    from depthattn.utils.file_manifest import write_file_manifest

    run = tiny_run(folder, prepared)
    checkpoint = run / "checkpoints" / "step_0000010"
    torch.save({"optimizer": _Payload()}, checkpoint / "optimizer.pt")
    (checkpoint / "manifest.json").unlink()
    write_file_manifest(checkpoint)  # the checksums match: only the unpickler stands in the way


class _Payload:
    def __reduce__(self):
        return (print, ("this code ran while loading a checkpoint",))


@setup(39)
def all_checkpoints_corrupt(folder, prepared):
    run = tiny_run(folder, prepared)
    weights = run / "checkpoints" / "step_0000010" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])


# --- the test ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from depthattn.data import prepare
    from tests.conftest import write_corpus

    root = tmp_path_factory.mktemp("table")
    write_corpus(root / "corpus", n_docs=8, n_words=300)
    return prepare(root / "corpus", out_dir=root / "prepared", vocab_size=300, num_workers=1,
                   seed=1, progress=False).parent  # seed 1: a validation document of the 8


ROWS = table_rows()


def test_the_table_has_25_rows_or_more_and_each_has_a_setup():
    numbers = [number for number, _, _ in ROWS]
    assert len(numbers) >= 25, f"README.md needs the table under {SECTION!r}"
    assert numbers == list(range(1, len(numbers) + 1))
    assert set(numbers) == set(SETUPS), "rows without a setup or setups without a row"


@pytest.mark.parametrize("number, command, excerpt", ROWS, ids=[str(r[0]) for r in ROWS])
def test_each_bad_input_fails_with_the_error_the_table_gives(number, command, excerpt, prepared,
                                                             tmp_path, monkeypatch, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("DEPTHATTN_CACHE", str(tmp_path / "cache"))
    SETUPS[number](folder, prepared)
    capsys.readouterr()
    argv = shlex.split(command)
    assert argv[0] == "depthattn"
    before = sorted(p.name for p in folder.iterdir())
    code = main(argv[1:])
    error = capsys.readouterr().err
    assert code == 2, f"row {number}: exit status {code}, stderr {error!r}"
    pattern = ".*".join(re.escape(fragment) for fragment in excerpt.split("…"))
    assert re.search(pattern, error, re.DOTALL), f"row {number}: {error!r}"
    assert "this code ran" not in error
    if argv[1] == "train":  # refused before any work: nothing new in the folder
        assert sorted(p.name for p in folder.iterdir()) == before, f"row {number}"
