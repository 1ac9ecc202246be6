"""`depthattn demo`: the plain model's rows are layers; a looped model's are its applications."""

from __future__ import annotations

import pytest

from depthattn.cli import main
from depthattn.experiments.demo import run_demo


def test_the_demo_labels_a_plain_model_by_layer(capsys):
    result = run_demo(seq_len=32, new_tokens=2)
    out = capsys.readouterr().out
    assert result["rows"] == [f"layer {i:2d}" for i in range(8)]
    assert "  layer  0: no sources, value unchanged" in out
    assert "  layer  5: L0=" in out and "looped" not in out
    assert result["same_tokens_as_full_forward"] and result["decode_max_abs_err"] < 1e-4


def test_the_demo_labels_a_looped_model_by_application(capsys):
    """p = 1, k = 2, r = 3 of the tiny preset's 8 layers: 1 + 6 + 5 = 12 applications."""
    main(["demo", "--seq-len", "32", "--new-tokens", "2", "--sources", "recurrent",
          "prelude_layers=1", "loop_layers=2", "loop_iterations=3"])
    out = capsys.readouterr().out
    assert "-> 12 applications (injection none, sources recurrent)" in out
    assert "  e  0 (layer 0, prelude): no sources, value unchanged" in out
    # the recurrent rule: layer 1 at iteration 2 reads application 0 and its own earlier ones
    assert "  e  5 (layer 1, iteration 2): e0=" in out
    line = next(x for x in out.splitlines() if x.startswith("  e  5 "))
    assert [s.split("=")[0] for s in line.split(": ")[1].split()] == ["e0", "e1", "e3", "e5"]
    assert "  e 11 (layer 7, coda): " in out
    assert "12 slots, one per application" in out
    assert "same tokens as argmax of one full forward: True" in out


def test_the_demo_refuses_a_field_that_does_not_exist(capsys):
    assert main(["demo", "loop_layer=2"]) == 2
    assert "unknown ModelConfig field(s) 'loop_layer'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="method='vanilla' is not allowed"):
        run_demo(overrides={"method": "vanilla"})
