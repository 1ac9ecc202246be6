"""A sweep over a model field, and the report of it: every section present, figures embedded
in the HTML, the pairwise statistics and the tables filled from the real runs."""

from __future__ import annotations

import json
import re

import pytest

from depthattn.experiments.report import SECTIONS, build_report
from depthattn.experiments.sweep import parse_sweep, run_sweep, with_value


def test_parse_sweep_reads_values_and_refuses_bad_fields():
    assert parse_sweep("num_layers=2,4,8") == ("num_layers", [2, 4, 8])
    assert parse_sweep("lr=1e-3,3e-3") == ("lr", [1e-3, 3e-3])
    for text, message in [("num_layers", "must look like"), ("num_layers=", "must look like"),
                          ("num_layer=2,3", "neither a training nor a model field"),
                          ("seed=1,2", "names the runs"), ("lr=1e-3,1e-3", "repeats a value")]:
        with pytest.raises(ValueError, match=message):
            parse_sweep(text)


def test_with_value_routes_model_and_training_fields(tiny_train_config):
    base = tiny_train_config()
    assert with_value(base, "lr", 0.01).lr == 0.01
    deeper = with_value(base, "num_layers", 6)
    assert deeper.model_overrides["num_layers"] == 6 and deeper.model_config().num_layers == 6
    assert base.model_overrides["num_layers"] == 4  # the base is not changed


def test_sweep_then_report(tiny_train_config, tmp_path):
    base = tiny_train_config(steps=4, eval_every=2, checkpoint_every=2, keep_checkpoints=3)
    out = tmp_path / "sweep"
    summary = run_sweep(base, ["vanilla", "value_residual", "depth_attention:stride=1"], [0, 1],
                        out, "num_layers=2,3")
    assert summary["field"] == "num_layers" and summary["values"] == [2, 3]
    assert [(r["value"], r["method"]) for r in summary["rows"]] == [
        (v, m) for v in (2, 3) for m in ("vanilla", "value_residual", "depth_attention:stride=1")]
    for row in summary["rows"]:
        assert (row["diff_vs_baseline"] is None) == (row["method"] == "vanilla")
    assert (out / "sweep_num_layers.png").stat().st_size > 10_000
    compare = json.loads((out / "num_layers=3" / "compare.json").read_text())
    assert [(p["method"], p["vs"]) for p in compare["pairs"]] == [
        ("value_residual", "vanilla"), ("depth_attention:stride=1", "vanilla"),
        ("depth_attention:stride=1", "value_residual")]
    assert all(p["n"] == 2 and 0 <= p["lower_on"] <= 2 for p in compare["pairs"])

    md_path, html_path = build_report(out, windows=2)
    md, html = md_path.read_text(), html_path.read_text()
    for section in SECTIONS:
        assert f"## {section}" in md and f"<h2>{section}</h2>" in html, section
    assert "| 3 | depth_attention:stride=1 |" in md  # the sweep table
    assert "d_z" in md and "lower on" in md  # the pairwise table
    assert md.count("| float32 |") == 3 and md.count("| bfloat16 |") == 3  # invariance rows
    for fmt in ("bfloat16 (Δ)", "float8_e4m3 (Δ)", "int8 (Δ)"):
        assert fmt in md
    images = re.findall(r"<img[^>]*src=\"([^\"]+)\"", html)
    assert len(images) >= 6 and all(src.startswith("data:image/png;base64,") for src in images)
    depth = json.loads((out / "num_layers=3" / "depth_attention-stride1" / "seed0" / "analysis" /
                        "depth_weights.json").read_text())
    assert [r["step"] for r in depth["over_training"]] == [2, 4]
    assert depth["mean_weight"][0] == [None] * 4 and depth["mean_weight"][2][3] is not None
