"""``load_model``, the one loader: every folder kind gives the model that was written, with the
same logits; ``save_model`` round trips; bad input fails with one error naming the path and the
accepted kinds. (The authors' format: tests/convert/test_official.py, against their math.)"""

from __future__ import annotations

import json

import pytest
import torch

from depthattn import load_model, save_model
from depthattn.io import KINDS, folder_kind
from depthattn.utils.file_manifest import write_file_manifest


def assert_same_model(loaded, model, ids):
    assert loaded.config == model.config
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


# --- our folder (save_model) -------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    dict(method="depth_attention", method_options={"stride": 2, "recent_window": 1},
         k_norm_position="after_rope", num_kv_heads=1),
    dict(method="vanilla"),
    dict(method="depth_attention", method_options={"stride": 1}, tie_embeddings=True),
])
def test_round_trip_keeps_config_and_logits(tmp_path, make_model, make_ids, overrides):
    model = make_model(seed=3, **overrides)
    ids = make_ids(2, 9, seed=4)
    with torch.no_grad():
        expected = model(ids)
    directory = tmp_path / "run"
    save_model(model, directory)
    assert (directory / "config.json").is_file()
    assert (directory / "model.safetensors").is_file()
    json.loads((directory / "config.json").read_text())  # plain JSON

    assert folder_kind(directory) == "depthattn"
    loaded = load_model(directory)
    assert loaded.config == model.config
    assert loaded.config.method_options == model.config.method_options
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), expected, rtol=0, atol=0)
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b
        assert torch.equal(a, b), name


def test_load_with_dtype(tmp_path, make_model, make_ids):
    model = make_model(seed=5, method="depth_attention")
    save_model(model, tmp_path)
    loaded = load_model(tmp_path, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    assert loaded.model.rotary_emb.inv_freq.dtype == torch.float32
    ids = make_ids(1, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).float(), model(ids), rtol=0, atol=1e-5)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "depthattn"}))
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_model(tmp_path)


# --- a training run and its checkpoints ----------------------------------------------------------
def checkpoint(run, step, model):
    folder = save_model(model, run / "checkpoints" / f"step_{step:07d}")
    (folder / "state.json").write_text(json.dumps({"step": step}))
    write_file_manifest(folder)
    return folder


def test_a_run_gives_its_final_model_else_its_newest_intact_checkpoint(tmp_path, make_model,
                                                                       make_ids):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "train_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"{run} is a training run with neither"):
        load_model(run)
    early, late, final = (make_model(seed=s, method="depth_attention") for s in (1, 2, 3))
    checkpoint(run, 10, early)
    newest = checkpoint(run, 20, late)
    ids = make_ids(2, 7)
    assert folder_kind(run) == "run"
    assert_same_model(load_model(run), late, ids)
    assert_same_model(load_model(newest), late, ids)  # a checkpoint on its own
    (newest / "model.safetensors").write_bytes(b"truncated")  # no longer verifies
    assert_same_model(load_model(run), early, ids)
    save_model(final, run / "model")
    assert_same_model(load_model(run), final, ids)


def test_a_distributed_checkpoint_loads_whole_in_one_process(tmp_path, make_model, make_ids):
    import torch.distributed.checkpoint as dcp

    for tied in (False, True):
        model = make_model(seed=4, method="depth_attention", tie_embeddings=tied)
        folder = tmp_path / f"step_tied_{tied}"
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(folder / "dcp"), no_dist=True)
        (folder / "config.json").write_text(json.dumps({"format": "depthattn",
                                                        **model.config.to_dict()}))
        assert folder_kind(folder) == "dcp"
        loaded = load_model(folder, dtype=torch.float64)
        assert all(p.dtype == torch.float64 for p in loaded.parameters())
        assert_same_model(load_model(folder), model, make_ids(2, 7))


# --- Hugging Face folders ----------------------------------------------------------------------
def test_a_hugging_face_folder_of_ours(tmp_path, make_model, make_ids):
    from depthattn.hf import DepthAttnForCausalLM

    model = make_model(seed=6, method="depth_attention", method_options={"stride": 2},
                       tie_embeddings=True)
    DepthAttnForCausalLM.from_core(model).save_pretrained(tmp_path / "hf")
    assert folder_kind(tmp_path / "hf") == "hf"
    assert_same_model(load_model(tmp_path / "hf"), model, make_ids(2, 7))


@pytest.fixture
def qwen3_folder(tmp_path, randomize):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=80,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    reference = randomize(Qwen3ForCausalLM(config).eval(), seed=1)
    reference.save_pretrained(tmp_path / "qwen3")
    return tmp_path / "qwen3", reference


def test_a_qwen3_folder_runs_any_parameter_free_method(qwen3_folder, make_ids):
    folder, reference = qwen3_folder
    ids = make_ids(2, 9, vocab=96)
    assert folder_kind(folder) == "qwen3"
    vanilla = load_model(folder).eval()
    assert vanilla.config.method == "vanilla"
    with torch.no_grad():
        torch.testing.assert_close(vanilla(ids), reference(ids).logits, rtol=1e-5, atol=1e-5)
    mixed = load_model(folder, method="depth_attention", method_options={"stride": 2}).eval()
    assert mixed.config.method_options["stride"] == 2
    for name, tensor in mixed.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[name]), name
    with pytest.raises(ValueError, match="method 'mhc' adds parameters the checkpoint does not"):
        load_model(folder, method="mhc")


# --- the options -------------------------------------------------------------------------------
def test_method_and_overrides(tmp_path, make_model, make_ids):
    model = make_model(seed=7, method="depth_attention", method_options={"stride": 2})
    save_model(model, tmp_path / "m")
    ids = make_ids(2, 7)
    options = load_model(tmp_path / "m", method_options={"recent_window": 2}).config
    assert options.method_options["stride"] == 2  # kept: only the given option changes
    assert options.method_options["recent_window"] == 2
    plain = load_model(tmp_path / "m", method="vanilla").eval()
    assert plain.config.method == "vanilla"
    with torch.no_grad():
        assert not torch.allclose(plain(ids), model(ids))
    longer = load_model(tmp_path / "m", overrides={"max_seq_len": 128})
    assert longer.config.max_seq_len == 128
    with pytest.raises(ValueError, match="method cannot be an override"):
        load_model(tmp_path / "m", overrides={"method": "vanilla"})
    with pytest.raises(ValueError, match="does not match the model: missing none, unexpected"):
        load_model(tmp_path / "m", overrides={"num_layers": 4})


# --- bad input ---------------------------------------------------------------------------------
def test_bad_input_names_the_path_and_every_accepted_kind(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hello")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    cases = [(tmp_path / "nowhere", FileNotFoundError, "does not exist. depthattn loads a model"),
             (tmp_path / "file.txt", FileNotFoundError, "is a file, not a folder"),
             (tmp_path / "empty", FileNotFoundError, "it has no config.json and is no training"),
             (tmp_path / "gpt2", ValueError, "holds a 'gpt2' model")]
    for path, error, reason in cases:
        with pytest.raises(error) as raised:
            load_model(path)
        message = str(raised.value)
        assert message.startswith(f"{path} "), message
        assert reason in message
        for kind in KINDS.values():
            assert kind in message
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(tmp_path / "junk")
