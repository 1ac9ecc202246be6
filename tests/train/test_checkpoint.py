"""Checkpoints never unpickle code: a crafted pickle is refused even with a matching manifest,
the optimizer file loads with weights_only, a checkpoint of another model is refused with the
differences named, and no `torch.load` in the package runs without weights_only=True. (That a
corrupt or partial checkpoint is named and skipped: test_run_dir.py, test_resume.py.)"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

from depthattn.train import train
from depthattn.train.checkpoint import checkpoint_name, load_training_state
from depthattn.train.run_dir import RunDir
from depthattn.utils.file_manifest import write_file_manifest

SRC = Path(__file__).resolve().parents[2] / "src" / "depthattn"


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


def test_a_checkpoint_written_before_newer_config_fields_resumes(tmp_path):
    """A saved config lacking fields ModelConfig gained later (e.g. the MLA ones) holds their
    defaults; one that states another value is refused."""
    from depthattn.io import CONFIG_NAME
    from depthattn.train.checkpoint import check_same_model
    from tests.conftest import tiny_model

    model = tiny_model()
    saved = model.config.to_dict()
    for name in ("attention", "kv_lora_rank", "rope_interleave"):
        del saved[name]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(saved))
    check_same_model(tmp_path, model)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**saved, "attention": "mla"}))
    with pytest.raises(ValueError, match=r"attention 'mla' \(this run: 'gqa'\)"):
        check_same_model(tmp_path, model)


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
