"""`depthattn compare --tune`: both protocols, a grid extended past an edge optimum, tuning
seeds never reported; and the paper table built from them (Holm families, cost columns,
plots)."""

from __future__ import annotations

import json

import pytest

from depthattn.experiments.paper_table import write_paper_table
from depthattn.experiments.tune import extended, parse_tune, run_tuned_compare
from depthattn.train import TrainConfig
from depthattn.utils.errors import DepthAttnError

METHODS = ["vanilla", "value_residual", "depth_attention"]


@pytest.mark.parametrize("text, tune_seeds, message", [
    ("lr=1e-3,3e-3", [9], "at least three values"),
    ("lr=1e-3,3e-3,x", [9], "positive numbers"),
    ("lr=1e-3,3e-3,9e-3", None, "needs --tune-seeds"),
    ("lr=1e-3,3e-3,9e-3", [1, 9], r"share \[1\]"),
    ("seed=1,2,3", [9], "names the runs"),
])
def test_bad_tuning_is_refused_before_any_run(text, tune_seeds, message):
    with pytest.raises(DepthAttnError, match=message):
        parse_tune(text, [0, 1], tune_seeds)


def test_the_grid_extends_by_its_edge_step():
    assert extended([1e-3, 3e-3, 9e-3], "high") == pytest.approx([1e-3, 3e-3, 9e-3, 27e-3])
    assert extended([1e-3, 2e-3, 4e-3], "low") == pytest.approx([5e-4, 1e-3, 2e-3, 4e-3])
    assert extended([2, 4, 8], "low") == [1, 2, 4, 8]
    assert extended([1, 2, 4], "low") == [1, 2, 4]  # nothing new below 1


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, prepared_corpus):
    """A tuned comparison of three methods on the tiny corpus (4 steps per run): lr on a grid
    whose best value for this budget is its top, so the grid grows."""
    out = tmp_path_factory.mktemp("tuned")
    base = TrainConfig(run_dir=str(out / "run"), data=str(prepared_corpus.parent),
                       model_overrides=dict(hidden_size=32, intermediate_size=64, num_layers=4,
                                            num_heads=4, num_kv_heads=2, head_dim=8),
                       seq_len=32, micro_batch_size=4, steps=4, lr=2e-3, eval_every=2,
                       eval_windows=4, checkpoint_every=0, progress=False, tensorboard=False)
    result = run_tuned_compare(base, METHODS, [0, 1], out, "lr=5e-4,1e-3,2e-3", [100, 101])
    return base, out, result


def test_tuning_seeds_are_never_reported(tuned):
    _, out, result = tuned
    for protocol in ("shared", "tuned"):
        for row in result[protocol]["rows"]:
            assert sorted(r["seed"] for r in row["runs"]) == [0, 1]
            assert all("seed10" not in r["run_dir"] for r in row["runs"])
    tuning_runs = {p.name for p in (out / "tune").glob("*/*/seed*")}
    assert tuning_runs == {"seed100", "seed101"}


def test_each_method_gets_its_best_value_and_edges_are_extended(tuned):
    _, out, result = tuned
    summary = json.loads((out / "tuning.json").read_text())
    assert summary == json.loads(json.dumps(result["tuning"]))
    for method in summary["methods"]:
        losses = method["mean_val_loss"]
        best = min(method["grid"], key=lambda v: losses[repr(v)])
        assert method["chosen"] == best
        # the best value is interior, or the grid was extended twice on that side
        assert not method["on_edge"] or method["extensions"] == 2
        if method["extensions"]:
            assert len(method["grid"]) == 3 + method["extensions"]
    assert "| vanilla |" in (out / "tuning.md").read_text()


def test_reported_runs_at_the_shared_value_are_reused(tuned):
    _, out, result = tuned
    chosen = {m["method"]: m["chosen"] for m in result["tuning"]["methods"]}
    for row in result["tuned"]["rows"]:
        folders = {str(r["run_dir"]).split("/")[-3] for r in row["runs"]}
        expected = "shared" if chosen[row["method"]] == 2e-3 else f"lr={chosen[row['method']]}"
        assert folders == {expected}


def test_the_paper_table_has_both_protocols_holm_and_costs(tuned, capsys):
    base, out, result = tuned
    costs = {m: {"added_params": 0, "added_flops_fraction": 0.0, "train_tokens_per_s_ratio": 1.0,
                 "activation_bytes_ratio": 1.0, "decode_batch1_ratio": 1.0,
                 "decode_batch32_ratio": 1.0, "inflight_vs_kv_measured": 0.1 * i,
                 "inflight_vs_kv_accounting": 0.1 * i, "persistent_vs_kv_measured": 1.0}
             for i, m in enumerate(METHODS)}
    table = write_paper_table(result, base, out, costs=costs)
    markdown = (out / "paper_table.md").read_text()
    assert "Quality, one shared recipe" in markdown and "Quality, each method at its own" in \
        markdown and "Holm" in markdown and "Cost, as a ratio to vanilla" in markdown
    for protocol in ("shared", "tuned"):
        rows = {r["method"]: r for r in table["protocols"][protocol]}
        # family vs vanilla: value_residual and depth_attention; vs Depth-Attention:
        # value_residual only (vanilla is compared with Depth-Attention in the first family)
        assert rows["depth_attention"]["vs_vanilla"]["family_size"] == 2
        assert "vs_depth_attention" not in rows["vanilla"]
        assert rows["value_residual"]["vs_depth_attention"]["family_size"] == 1
        vs = [rows[m]["vs_vanilla"] for m in ("value_residual", "depth_attention")]
        assert sorted(d["p_holm"] for d in vs) == pytest.approx(
            sorted([min(1, 2 * min(d["p_value"] for d in vs)),
                    max(min(1, 2 * min(d["p_value"] for d in vs)),
                        max(d["p_value"] for d in vs))]))
    for png in table["plots"]:
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "paper_table.json").read_text())["chosen"] == table["chosen"]


def test_cost_columns_are_measured_once_and_reused(tuned, tmp_path):
    """The quiet pass on the tuned comparison's tiny geometry (1 round: the columns, not the
    speed): every column present, state measured equal to the accounting, the file reused."""
    from depthattn.experiments.table_costs import table_costs

    base, _, _ = tuned
    path = tmp_path / "costs.json"
    costs = table_costs(base, METHODS, path, rounds=1)
    assert list(costs) == METHODS
    for c in costs.values():
        assert c["inflight_vs_kv_measured"] == pytest.approx(c["inflight_vs_kv_accounting"])
        assert c["persistent_vs_kv_measured"] == pytest.approx(1.0, abs=1e-2)
    assert costs["vanilla"]["train_tokens_per_s_ratio"] == 1.0
    assert costs["depth_attention"]["added_params"] == 0
    mtime = path.stat().st_mtime
    assert table_costs(base, METHODS, path, rounds=1) == costs
    assert path.stat().st_mtime == mtime
