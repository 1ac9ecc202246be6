"""``init_from`` (continued pretraining, the retrofit path), ``train --dry-run`` and the bad
inputs of the distributed fields, in one process."""

from __future__ import annotations

import pytest
import torch

from depthattn.cli import main
from depthattn.io import load_model, save_model
from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.train import TrainConfig, train
from depthattn.train.init_from import initialise_from
from depthattn.train.plan import plan_training

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


def test_dry_run_prints_the_plan_without_training(capsys, tmp_path):
    code = main(["train", "--config", "paper_360m", "--dry-run", "--world-size", "8",
                 "--device-type", "cuda", f"run_dir={tmp_path / 'never'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| world size | 8 |" in out and "FSDP" in out and "| gradient accumulation |" in out
    assert "activations" in out and "**total**" in out
    assert not (tmp_path / "never").exists()


def test_plan_shards_state_over_the_ranks():
    config = TrainConfig(model="360m", global_batch_tokens=8 * 4 * 256, micro_batch_size=4,
                         seq_len=256)
    one, eight = plan_training(config, 1, "cuda"), plan_training(config, 8, "cuda")
    assert one.accumulation == 8 and eight.accumulation == 1
    assert one.tokens_per_step == eight.tokens_per_step
    assert eight.memory.optimizer == one.memory.optimizer // 8
    hsdp = plan_training(TrainConfig(model="360m", dp_replicate=2), 8, "cuda")
    assert hsdp.dp_shard == 4 and "HSDP" in hsdp.mesh
    assert one.memory.activations_checkpointed < one.memory.activations


@pytest.mark.parametrize("args, message", [
    (["--world-size", "2"], "only shape a --dry-run"),
    (["--dry-run", "--world-size", "3", "dp_replicate=2"], "dp_replicate .2. must divide"),
    (["--dry-run", "--world-size", "3", "global_batch_tokens=4096", "seq_len=256",
      "micro_batch_size=4"], "multiple of world size x micro_batch_size"),
    (["dp_replicate=0"], "dp_replicate"),
])
def test_bad_distributed_inputs(capsys, args, message, tmp_path):
    code = main(["train", *args, f"run_dir={tmp_path / 'run'}"])
    assert code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_dp_replicate_needs_torchrun(tiny_train_config):
    with pytest.raises(ValueError, match="dp_replicate .2. needs several processes"):
        train(tiny_train_config(dp_replicate=2))


def test_cpu_offload_needs_a_sharded_gpu_run(tiny_train_config):
    with pytest.raises(ValueError, match="fsdp_cpu_offload .* needs torchrun and device cuda"):
        train(tiny_train_config(fsdp_cpu_offload=True))


def test_resume_with_other_tokens_per_step_is_refused(tiny_train_config):
    config = tiny_train_config(steps=10)
    train(config)
    with pytest.raises(ValueError, match="trained at 128 tokens per step"):
        train(tiny_train_config(steps=10, micro_batch_size=8), resume=True)


def test_async_checkpoint_needs_torchrun(tiny_train_config):
    with pytest.raises(ValueError, match="async_checkpoint writes the sharded checkpoints"):
        train(tiny_train_config(async_checkpoint=True))
