"""`depthattn compare`: runs, collection of finished runs, statistics, report and plots."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import stats

from depthattn.analysis.stats import paired_difference
from depthattn.experiments.compare import parse_method, run_compare


def test_compare_two_methods_two_seeds_writes_table_json_and_plots(tiny_train_config, tmp_path,
                                                                   capsys):
    base = tiny_train_config(steps=6, eval_every=3, checkpoint_every=0)
    out = tmp_path / "cmp"
    report = run_compare(base, ["vanilla", "depth_attention:stride=1"], [0, 1], out)
    table = (out / "compare.md").read_text()
    assert "| depth_attention:stride=1 |" in table and "| vanilla |" in table
    assert "Δ loss vs vanilla" in table
    data = json.loads((out / "compare.json").read_text())
    assert data["baseline"] == "vanilla" and len(data["rows"]) == 2
    row = data["rows"][1]
    assert row["val_loss"]["n"] == 2 and row["diff_vs_baseline"]["n"] == 2
    for png in ("val_loss_curves.png", "final_val_loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["rows"][0]["method"] == "vanilla"
    assert "| vanilla |" in capsys.readouterr().out
    # a second call collects the finished runs instead of training again, even when only
    # presentation fields (progress, logging) differ
    mtime = (out / "vanilla" / "seed0" / "summary.json").stat().st_mtime
    run_compare(dataclasses.replace(base, progress=True, log_every=3),
                ["vanilla", "depth_attention:stride=1"], [0, 1], out)
    assert (out / "vanilla" / "seed0" / "summary.json").stat().st_mtime == mtime


def test_a_finished_run_with_another_recipe_is_not_collected(tiny_train_config, tmp_path):
    base = tiny_train_config(steps=3, eval_every=0, checkpoint_every=0)
    run_compare(base, ["vanilla"], [0], tmp_path / "c")
    with pytest.raises(ValueError, match=r"trained with another configuration \(differs in lr\)"):
        run_compare(dataclasses.replace(base, lr=1e-2), ["vanilla"], [0], tmp_path / "c")


def test_paired_difference_matches_scipy():
    rng = np.random.default_rng(0)
    base = rng.normal(5.0, 0.05, size=6)
    method = base - 0.03 + rng.normal(0, 0.01, size=6)
    diff = paired_difference(method, base)
    expected = stats.ttest_rel(method, base)
    assert diff.mean == pytest.approx(float(np.mean(method - base)))
    assert diff.p_value == pytest.approx(expected.pvalue)
    assert diff.t_statistic == pytest.approx(expected.statistic)
    assert diff.ci_low < diff.mean < diff.ci_high < 0


def test_single_seed_has_no_significance():
    diff = paired_difference([1.0], [1.1])
    assert diff.mean == pytest.approx(-0.1) and diff.p_value is None and diff.ci_low is None


@pytest.mark.parametrize("text, message", [
    ("nope", r"method \('nope'\) is unknown"),
    ("depth_attention:stride", r"must look like key=value"),
])
def test_bad_method_specs(text, message):
    with pytest.raises(ValueError, match=message):
        parse_method(text)


def test_bad_seeds_and_options_fail_before_training(tiny_train_config, tmp_path):
    base = tiny_train_config()
    with pytest.raises(ValueError, match="seeds"):
        run_compare(base, ["vanilla"], [], tmp_path / "x")
    with pytest.raises(ValueError, match=r"stride \(0\) must be an integer >= 1"):
        run_compare(base, ["vanilla", "depth_attention:stride=0"], [0], tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_compare_every_registered_method(tiny_train_config, tmp_path):
    """Integration: all methods x 2 seeds, short budget, through `depthattn compare` (~10 s,
    so it runs in CI)."""
    from depthattn.methods import method_names

    methods = method_names()
    base = tiny_train_config(steps=8, eval_every=4, checkpoint_every=0)
    report = run_compare(base, methods, [0, 1], tmp_path / "all")
    assert [row["method"] for row in report["rows"]] == methods
    for row in report["rows"]:
        assert row["val_loss"]["n"] == 2 and np.isfinite(row["val_loss"]["mean"])


def test_compare_adds_zero_shot_columns_with_paired_tests(tiny_train_config, tmp_path):
    base = tiny_train_config(steps=4, eval_every=0, checkpoint_every=0)
    out = tmp_path / "zs"
    report = run_compare(base, ["vanilla", "depth_attention"], [0, 1], out,
                         tasks="corpus_continuation", task_limit=8)
    row = report["rows"][1]
    entry = row["zeroshot"]["corpus_continuation"]
    assert entry["acc"]["n"] == 2 and 0.0 <= entry["acc"]["mean"] <= 1.0
    assert entry["diff_vs_baseline"]["n"] == 2
    assert "Zero-shot accuracy" in (out / "compare.md").read_text()
    cached = out / "vanilla" / "seed0" / "zeroshot" / "zeroshot.json"
    mtime = cached.stat().st_mtime
    run_compare(base, ["vanilla", "depth_attention"], [0, 1], out, tasks="corpus_continuation",
                task_limit=8)
    assert cached.stat().st_mtime == mtime  # computed once per run


def test_compare_refuses_unknown_tasks_before_training(tiny_train_config, tmp_path):
    with pytest.raises(ValueError, match="unknown task name"):
        run_compare(tiny_train_config(), ["vanilla"], [0], tmp_path / "t", tasks="corpus_clozz")
    assert not (tmp_path / "t").exists()
