"""TrainConfig: files, overrides and validation. Property: whatever values the training fields
get, TrainConfig either accepts them and round-trips through its saved form and the command
line, or refuses them with a ValueError that names the field and the value — never a TypeError
or a crash halfway."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from depthattn.train.config import TrainConfig, field_names, load_train_config


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
    assert (config.grad_accumulation_for(1), config.tokens_per_step) == (4, 512)


def test_every_shipped_config_loads_by_name_and_builds_its_model_config():
    from depthattn.model.config import PRESETS
    from depthattn.train.config import shipped_configs

    names = shipped_configs()
    assert {"quickstart", "paper_3b", "paper_1.5b", "paper_410m"} <= set(names)
    for name in names:
        config = load_train_config(name)
        model = config.model_config(vocab_size=config.vocab_size
                                    if config.model == "tiny" else None)
        assert model.max_seq_len >= config.seq_len
        if name.removeprefix("paper_") in PRESETS:  # the paper's recipe for one of its sizes
            assert (config.seq_len, config.tokens_per_step, config.warmup_ratio,
                    config.min_lr_ratio) == (2048, 1024 * 2048, 0.02, 0.1)


def test_missing_config_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match=r"does not exist \(shipped configs: .*paper_3b"):
        load_train_config("paper_7b")


# --- properties ------------------------------------------------------------------------------
DEFAULTS = TrainConfig()
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                      st.lists(st.integers(), max_size=2),
                      st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def plausible(f: dataclasses.Field):
    """Values of the field's own type, in and out of range."""
    return {"int": st.integers(-5, 5000), "float": st.floats(-2, 2, allow_nan=False),
            "bool": st.booleans(), "str": st.sampled_from(["auto", "float32", "fp8", "", "x"]),
            }.get(f.type, st.just(getattr(DEFAULTS, f.name)))


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


@given(st.data())
def test_any_value_is_accepted_or_refused_by_name(data):
    names = data.draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4,
                               unique=True))
    values = {name: data.draw(st.one_of(plausible(FIELDS[name]), ANY_VALUE)) for name in names}
    try:
        config = TrainConfig(**values)
    except ValueError as error:
        message = str(error)
        assert any(name in message for name in field_names()), message
        return
    saved = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig(**saved) == config
    overrides = [f"{k}={json.dumps(v)}" for k, v in saved.items() if k in values]
    assert load_train_config(None, overrides, base=saved) == config


@given(st.sampled_from(sorted(FIELDS)), st.integers(0, 3), st.sampled_from("xzq_"))
def test_a_misspelt_override_is_refused_with_the_field_it_resembles(name, position, letter):
    typo = name[:position] + letter + name[position + 1:] if len(name) > 5 else name + letter
    if typo in FIELDS:
        return
    try:
        load_train_config(None, [f"{typo}=1"])
    except ValueError as error:
        assert f"override {typo!r} is not a training field" in str(error)
        assert "allowed: " in str(error)
    else:
        raise AssertionError(f"{typo} was accepted")
