"""Checkpoints are verified before they are trusted and never unpickle code: a corrupt or
partial one is reported by name and skipped for the one before it, a crafted pickle is refused
even with a matching manifest, a checkpoint of another model is refused with the differences
named, and no `torch.load` in the package runs without weights_only=True."""

from __future__ import annotations

import ast
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from depthattn.train import train
from depthattn.train.checkpoint import checkpoint_name, load_training_state
from depthattn.train.metrics import read_metrics
from depthattn.train.run_dir import RunDir
from depthattn.utils.file_manifest import write_file_manifest

SRC = Path(__file__).resolve().parents[2] / "src" / "depthattn"


@pytest.fixture
def run_with_two_checkpoints(tiny_train_config):
    result = train(tiny_train_config(steps=20, checkpoint_every=10, eval_every=0))
    run = RunDir(result.run_dir)
    assert [p.name for p in run.checkpoints()] == [checkpoint_name(20), checkpoint_name(10)]
    return run


def flip_a_byte(path: Path, offset: int = -9) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing file", "no manifest"])
def test_a_corrupt_checkpoint_is_named_and_skipped(run_with_two_checkpoints, caplog, damage):
    run = run_with_two_checkpoints
    newest = run.checkpoints_dir / checkpoint_name(20)
    weights = newest / "model.safetensors"
    if damage == "flipped byte":
        flip_a_byte(weights)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "missing file":
        (newest / "optimizer.pt").unlink()
    else:
        (newest / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert run.latest_checkpoint() == run.checkpoints_dir / checkpoint_name(10)
    assert f"skipping corrupt checkpoint {checkpoint_name(20)}" in caplog.text
    assert {"flipped byte": "sha256", "truncated": "bytes", "missing file": "optimizer.pt",
            "no manifest": "manifest.json"}[damage] in caplog.text


def test_resume_skips_a_corrupt_checkpoint_and_still_matches(tiny_train_config, tmp_path):
    straight = train(tiny_train_config(run_dir=str(tmp_path / "straight"), steps=20,
                                       eval_every=0))
    config = tiny_train_config(run_dir=str(tmp_path / "damaged"), steps=20, eval_every=0,
                               keep_checkpoints=3)
    train(config)
    run = RunDir(config.run_dir)
    flip_a_byte(run.checkpoints_dir / checkpoint_name(20) / "optimizer.pt", offset=200)
    (run.summary_file).unlink()
    train(config, resume=True)  # from step 10, since 20 no longer verifies
    assert read_metrics(run.path)[-1]["val_loss"] == read_metrics(straight.run_dir)[-1]["val_loss"]
    losses = [r["loss"] for r in read_metrics(run.path) if "loss" in r]
    assert losses == [r["loss"] for r in read_metrics(straight.run_dir) if "loss" in r]


def test_resume_refuses_when_no_checkpoint_verifies(run_with_two_checkpoints,
                                                    tiny_train_config):
    run = run_with_two_checkpoints
    for checkpoint in run.checkpoints():
        flip_a_byte(checkpoint / "model.safetensors")
    with pytest.raises(ValueError, match=r"no checkpoint of .* verifies.*step_0000020: .*sha256"):
        train(tiny_train_config(steps=20, checkpoint_every=10, eval_every=0), resume=True)


class Payload:
    """What a crafted checkpoint would run on loading, were it unpickled."""

    def __reduce__(self):
        return (Path.touch, (Path(_marker),))


_marker = ""


def test_a_crafted_pickle_in_the_optimizer_file_is_refused(run_with_two_checkpoints,
                                                           tiny_train_config, tmp_path):
    global _marker
    _marker = str(tmp_path / "code_ran")
    run = run_with_two_checkpoints
    newest = run.checkpoints_dir / checkpoint_name(20)
    torch.save({"optimizer": Payload()}, newest / "optimizer.pt")
    torch.load(newest / "optimizer.pt", weights_only=False)  # unpickled, the payload runs:
    assert Path(_marker).exists()
    Path(_marker).unlink()
    # the attacker also rewrites the manifest, so the checksums match
    (newest / "manifest.json").unlink()
    write_file_manifest(newest)
    with pytest.raises(ValueError, match=r"optimizer.pt holds objects other than tensors.*"
                                         r"refusing to unpickle it"):
        load_training_state(newest)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        train(tiny_train_config(steps=20, checkpoint_every=10, eval_every=0), resume=True)
    assert not Path(_marker).exists(), "the payload ran"


def test_the_optimizer_file_loads_with_weights_only(run_with_two_checkpoints):
    newest = run_with_two_checkpoints.checkpoints_dir / checkpoint_name(20)
    state = torch.load(newest / "optimizer.pt", weights_only=True)
    assert set(state) == {"optimizer", "scheduler", "rng"}
    assert json.loads((newest / "state.json").read_text())["step"] == 20


def test_a_checkpoint_of_another_model_is_refused_with_the_differences(tiny_train_config,
                                                                       tmp_path):
    other = train(tiny_train_config(run_dir=str(tmp_path / "other"), steps=10, eval_every=0,
                                    model_overrides=dict(hidden_size=32, intermediate_size=64,
                                                         num_layers=2, num_heads=4,
                                                         num_kv_heads=2, head_dim=8),
                                    method="vanilla"))
    config = tiny_train_config(run_dir=str(tmp_path / "mine"), steps=10, eval_every=0)
    train(config)
    mine = RunDir(config.run_dir)
    shutil.rmtree(mine.checkpoints_dir / checkpoint_name(10))
    shutil.copytree(RunDir(other.run_dir).checkpoints_dir / checkpoint_name(10),
                    mine.checkpoints_dir / checkpoint_name(10))
    with pytest.raises(ValueError, match=r"holds another model than this run trains: .*"
                                         r"method 'vanilla' \(this run: 'depth_attention'\).*"
                                         r"num_layers 2 \(this run: 4\)"):
        train(config, resume=True)


def test_no_torch_load_without_weights_only_true_in_the_package():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                           and k.value.value is True for k in node.keywords)
                if not safe:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders
