"""Property: whatever values the training fields get, TrainConfig either accepts them and
round-trips through its saved form and the command line, or refuses them with a ValueError that
names the field and the value — never a TypeError or a crash halfway."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given
from hypothesis import strategies as st

from depthattn.train.config import TrainConfig, field_names, load_train_config

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
