"""Memory and disk are checked before any work: a clear message instead of an OOM or a full
disk an hour in. The memory figure is a lower bound, so it never refuses a run that fits."""

from __future__ import annotations

import pytest

from depthattn.model.config import ModelConfig
from depthattn.train import TrainConfig, preflight, train
from depthattn.train.preflight import count_parameters, estimate_memory


def test_parameters_are_counted_without_allocating_them():
    config = ModelConfig.from_preset("3b", method="depth_attention")
    assert 2.5e9 < count_parameters(config) < 4.5e9  # on the meta device: instant, no memory


def test_the_estimate_is_a_lower_bound_of_a_real_step(tiny_train_config, prepared_corpus):
    import torch

    from depthattn import CausalLM

    config = tiny_train_config()
    model_config = config.model_config(vocab_size=300)
    model = CausalLM(model_config)
    need = estimate_memory(model_config, config, 4, count_parameters(model_config))
    optimizer = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, 300, (config.micro_batch_size, config.seq_len))
    model.loss(ids, ids).backward()
    optimizer.step()
    held = sum(t.numel() * t.element_size() for p in model.parameters()
               for t in [p, p.grad, *optimizer.state[p].values()] if t.dim())
    assert need.state_bytes == held == need.parameters * 16


def test_a_model_too_large_for_the_memory_is_refused_before_any_work(tiny_train_config,
                                                                     tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "available_memory", lambda device: 1000)
    config = tiny_train_config(run_dir=str(tmp_path / "never"))
    with pytest.raises(ValueError, match=r"model 'tiny' \(\d[\d,]* parameters\) needs at least "
                                         r"[\d.]+ KiB to train on cpu .* but 1000 bytes are available; "
                                         r"choose a smaller model"):
        train(config)
    assert not (tmp_path / "never").exists()


def test_a_full_disk_is_refused_before_any_work(tiny_train_config, tmp_path, monkeypatch):
    class Usage:
        free = 1000

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: Usage)
    config = tiny_train_config(run_dir=str(tmp_path / "deep" / "never"))
    with pytest.raises(ValueError, match=r"not enough free disk space for a checkpoint in "
                                         r".*never: one needs about [\d.]+ KiB .* has 1000 bytes "
                                         r"free"):
        train(config)
    assert not (tmp_path / "deep").exists()


def test_the_checks_pass_on_this_machine_for_the_tiny_run():
    config = TrainConfig(model="tiny", micro_batch_size=8, seq_len=256)
    model_config = config.model_config()
    import torch

    preflight.check_memory(model_config, config, torch.device("cpu"), None,
                           count_parameters(model_config))
