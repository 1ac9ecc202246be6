"""save_model / load_model round trip."""

from __future__ import annotations

import json

import pytest
import torch

from depthattn import load_model, save_model


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
    ids = make_ids(1, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).float(), model(ids), rtol=0, atol=1e-5)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path)
