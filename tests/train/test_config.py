"""TrainConfig: files, overrides and validation."""

from __future__ import annotations

import pytest

from depthattn.train.config import TrainConfig, load_train_config


def test_toml_yaml_and_overrides(tmp_path):
    (tmp_path / "a.toml").write_text('[train]\nsteps = 7\nmethod = "depth_attention"\n'
                                     'method_options = { stride = 2 }\n')
    (tmp_path / "a.yaml").write_text("steps: 7\nmethod: depth_attention\n"
                                     "method_options: {stride: 2}\n")
    for name in ("a.toml", "a.yaml"):
        config = load_train_config(tmp_path / name, ["lr=0.002", "compile=true",
                                                     'model_overrides={"num_layers": 2}'])
        assert (config.steps, config.method, config.method_options) == (7, "depth_attention",
                                                                        {"stride": 2})
        assert (config.lr, config.compile, config.model_overrides) == (0.002, True,
                                                                       {"num_layers": 2})


@pytest.mark.parametrize("fields, message", [
    (dict(micro_batch_size=4, seq_len=32, global_batch_tokens=100),
     r"global_batch_tokens \(100\) must be a multiple of micro_batch_size x seq_len \(4 x 32 = 128\)"),
    (dict(steps=0), r"steps \(0\) must be a positive integer"),
    (dict(lr=-1.0), r"lr \(-1.0\) must be > 0"),
    (dict(dtype="fp8"), r"dtype \('fp8'\) must be one of auto, float32, bfloat16"),
    (dict(warmup_ratio=1.5), r"warmup_ratio \(1.5\) must be in \[0, 1\)"),
])
def test_invalid_fields_name_the_value(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_unknown_fields_are_refused(tmp_path):
    (tmp_path / "bad.toml").write_text("stpes = 3\n")
    with pytest.raises(ValueError, match="unknown field.*stpes"):
        load_train_config(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="override 'stpes' is not a training field"):
        load_train_config(None, ["stpes=3"])


def test_accumulation_derived_from_global_batch():
    config = TrainConfig(micro_batch_size=4, seq_len=32, global_batch_tokens=512)
    assert (config.grad_accumulation, config.tokens_per_step) == (4, 512)


def test_every_shipped_config_loads_by_name_and_builds_its_model_config():
    from depthattn.train.config import shipped_configs

    names = shipped_configs()
    assert {"quickstart", "paper_3b", "paper_1.5b", "paper_410m"} <= set(names)
    for name in names:
        config = load_train_config(name)
        model = config.model_config(vocab_size=config.vocab_size
                                    if config.model == "tiny" else None)
        assert model.max_seq_len >= config.seq_len
        if name.startswith("paper_"):
            assert (config.seq_len, config.tokens_per_step, config.warmup_ratio,
                    config.min_lr_ratio) == (2048, 1024 * 2048, 0.02, 0.1)


def test_missing_config_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match=r"does not exist \(shipped configs: .*paper_3b"):
        load_train_config("paper_7b")
