"""`depthattn eval PATH... --loops R1,R2,...`: perplexity of a looped model at each number of loop
iterations, written to loops.json / loops.md / loops.png."""

from __future__ import annotations

import json
import math

import pytest

from depthattn.cli import main
from depthattn.io import save_model
from tests.conftest import tiny_model

LOOP = {"num_layers": 4, "prelude_layers": 1, "loop_layers": 2, "loop_iterations": 2}


@pytest.fixture
def looped_dir(tmp_path, tokenizer):
    model = tiny_model(seed=0, vocab_size=len(tokenizer), max_seq_len=96, **LOOP)
    return save_model(model, tmp_path / "looped")


@pytest.fixture
def plain_dir(tmp_path, tokenizer):
    return save_model(tiny_model(seed=1, vocab_size=len(tokenizer), max_seq_len=96),
                      tmp_path / "plain")


def common(prepared) -> list[str]:
    return ["--data", str(prepared), "--seq-len", "32", "--windows", "2", "--batch-size", "2",
            "--device", "cpu"]


def test_loops_table_files_and_own_r_matches_plain_eval(looped_dir, prepared, tmp_path,
                                                         capsys):
    from depthattn.eval.run import evaluate_path

    out = tmp_path / "out"
    assert main(["eval", str(looped_dir), "--loops", "1,2,3", "--out-dir", str(out),
                 *common(prepared)]) == 0
    printed = capsys.readouterr().out
    assert "(trained)" in printed and "| r |" in printed
    for name in ("loops.json", "loops.md", "loops.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "loops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((out / "loops.json").read_text())["rows"]
    assert [row["r"] for row in rows] == [1, 2, 3]
    assert all(math.isfinite(row["val_loss"]) and row["trained_r"] == 2 for row in rows)
    assert len({round(row["val_loss"], 6) for row in rows}) == 3  # r changes the loss
    plain = evaluate_path(looped_dir, data=str(prepared), seq_len=32, windows=2, batch_size=2,
                          device="cpu")
    own = next(row for row in rows if row["r"] == 2)
    assert own["val_loss"] == pytest.approx(plain.loss, rel=1e-6, abs=1e-7)
    assert own["val_tokens"] == plain.tokens


def test_several_paths_and_default_out_dir(looped_dir, prepared, tmp_path, tokenizer):
    other = save_model(tiny_model(seed=3, vocab_size=len(tokenizer), max_seq_len=96, **LOOP),
                       tmp_path / "looped2")
    assert main(["eval", str(looped_dir), str(other), "--loops", "1,4", *common(prepared)]) == 0
    rows = json.loads((looped_dir / "loops.json").read_text())["rows"]  # the first path's folder
    assert [(row["path"], row["r"]) for row in rows] == [
        (str(looped_dir), 1), (str(looped_dir), 4), (str(other), 1), (str(other), 4)]
    assert (looped_dir / "loops.png").is_file()


@pytest.mark.parametrize("value", ["0", "1,x", "2,-1", "1.5", "", "1,1"])
def test_a_bad_loops_value_is_named(value, looped_dir, prepared, tmp_path, capsys):
    assert main(["eval", str(looped_dir), "--loops", value, "--out-dir", str(tmp_path / "o"),
                 *common(prepared)]) == 2
    err = capsys.readouterr().err
    assert "--loops" in err
    assert not (tmp_path / "o").exists()


def test_loops_on_a_model_that_is_not_looped(plain_dir, looped_dir, prepared, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["eval", str(looped_dir), str(plain_dir), "--loops", "1,2", "--out-dir",
                 str(out), *common(prepared)]) == 2
    err = capsys.readouterr().err
    assert str(plain_dir) in err and "loop_layers=0" in err
    assert not out.exists()  # refused before any evaluation


def test_loops_with_tasks_is_refused(looped_dir, capsys):
    assert main(["eval", str(looped_dir), "--loops", "1,2", "--tasks", "paper"]) == 2
    assert "not to --tasks" in capsys.readouterr().err


def test_several_paths_without_loops_is_refused(looped_dir, plain_dir, capsys):
    assert main(["eval", str(looped_dir), str(plain_dir)]) == 2
    assert "several paths apply with --loops" in capsys.readouterr().err


def test_loops_through_a_kv_cache(looped_dir, prepared, tmp_path):
    out = tmp_path / "out"
    assert main(["eval", str(looped_dir), "--loops", "1,2", "--kv-cache", "float32",
                 "--out-dir", str(out), *common(prepared)]) == 0
    rows = json.loads((out / "loops.json").read_text())["rows"]
    assert [row["r"] for row in rows] == [1, 2]
    assert all(math.isfinite(row["val_loss"]) and row["kv_cache"] == "float32" for row in rows)
