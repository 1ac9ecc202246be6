"""``init_from`` (continued pretraining, the retrofit path): the source's weights, the method's
own parameters kept fresh, another geometry or extra parameters refused."""

from __future__ import annotations

import pytest
import torch

from depthattn.io import load_model, save_model
from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.train import train
from depthattn.train.resume import initialise_from

GEOMETRY = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 4, "num_heads": 4,
            "num_kv_heads": 2, "head_dim": 8}


def saved(tmp_path, method="vanilla", seed=3, **overrides):
    torch.manual_seed(seed)
    model = CausalLM(ModelConfig.from_preset("tiny", method=method, vocab_size=300,
                                             **{**GEOMETRY, **overrides}))
    return save_model(model, tmp_path / f"source_{method}_{seed}"), model


def test_init_from_a_vanilla_model_starts_depth_attention_from_its_weights(tmp_path):
    folder, source = saved(tmp_path)
    torch.manual_seed(0)
    target = CausalLM(ModelConfig.from_preset("tiny", method="depth_attention", vocab_size=300,
                                              **GEOMETRY))
    initialise_from(target, str(folder))
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_init_from_keeps_the_fresh_parameters_only_the_method_adds(tmp_path):
    folder, source = saved(tmp_path)
    torch.manual_seed(0)
    fresh = CausalLM(ModelConfig.from_preset("tiny", method="mhc", vocab_size=300, **GEOMETRY))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    initialise_from(fresh, str(folder))
    after = fresh.state_dict()
    for name, tensor in after.items():
        expected = before[name] if name.startswith("model.cross_layer.") else \
            source.state_dict()[name]
        assert torch.equal(tensor, expected), name


def test_init_from_another_geometry_names_the_difference(tmp_path):
    folder, _ = saved(tmp_path, intermediate_size=96)
    target = CausalLM(ModelConfig.from_preset("tiny", vocab_size=300, **GEOMETRY))
    with pytest.raises(ValueError, match=r"intermediate_size 96 \(this run: 64\)"):
        initialise_from(target, str(folder))


def test_init_from_a_model_with_extra_parameters_is_refused(tmp_path):
    folder, _ = saved(tmp_path, method="mhc")
    target = CausalLM(ModelConfig.from_preset("tiny", vocab_size=300, **GEOMETRY))
    with pytest.raises(ValueError, match="not in this model: model.cross_layer"):
        initialise_from(target, str(folder))


def test_init_from_a_qwen3_folder_retrofits_depth_attention(tmp_path, randomize):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    qwen3 = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
        max_position_embeddings=1024, tie_word_embeddings=False))
    randomize(qwen3, seed=2).save_pretrained(tmp_path / "qwen3")
    target = CausalLM(ModelConfig.from_preset("tiny", method="depth_attention", vocab_size=300,
                                              **GEOMETRY))
    initialise_from(target, str(tmp_path / "qwen3"))
    for name, tensor in qwen3.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_training_from_init_from_starts_at_its_loss(tiny_train_config, tmp_path):
    first = tiny_train_config(run_dir=str(tmp_path / "first"), steps=10, method="vanilla")
    train(first)
    again = tiny_train_config(run_dir=str(tmp_path / "again"), steps=10, lr=1e-9,
                              warmup_ratio=0.0, init_from=str(tmp_path / "first"))
    result = train(again)
    trained = load_model(tmp_path / "first" / "model")
    # a learning rate of 1e-9 leaves the weights where init_from put them
    continued = load_model(tmp_path / "again" / "model")
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(continued.state_dict()[name], tensor, rtol=0, atol=1e-6)
    assert result.step == 10
