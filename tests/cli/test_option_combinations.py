"""Options that only mean something together with another one are refused alone, before work."""

from __future__ import annotations

import pytest

from depthattn.cli import main


@pytest.mark.parametrize("argv, message", [
    (["compare", "--task-limit", "5"], "--task-limit applies to zero-shot tasks"),
    (["quickstart", "--task-limit", "5"], "--task-limit applies to zero-shot tasks"),
    (["compare", "--tune-seeds", "7"], "--tune-seeds applies to --tune"),
    (["compare", "--tune", "lr=1e-3,2e-3,4e-3", "--sweep", "lr=1e-3,2e-3"],
     "--tune and --sweep do not combine"),
    (["compare", "--tune", "lr=1e-3,2e-3,4e-3", "--tune-seeds", "0"], r"share [0]"),
    (["eval", "some/run", "--prefill-chunk", "8"], "--prefill-chunk applies with --kv-cache"),
    (["eval", "some/run", "--kv-cache", "int8", "--tasks", "paper"], "not to --tasks"),
])
def test_an_option_without_its_partner_is_an_error(argv, message, capsys, tmp_path):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_config_file_carries_compare_settings_and_refuses_unknown_ones(tmp_path, capsys):
    from depthattn.train.config import read_compare_settings

    assert read_compare_settings("paper_table")["tune_seeds"] == [100, 101, 102]
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nsteps = 3\n[compare]\ntune_seed = [1]\n')
    assert main(["compare", "--config", str(bad)]) == 2
    assert "unknown [compare] setting 'tune_seed'" in capsys.readouterr().err
    bad.write_text('[train]\nsteps = 3\n[evaluate]\ntasks = "x"\n')
    assert main(["compare", "--config", str(bad)]) == 2
    assert "unknown table(s) or field(s) evaluate" in capsys.readouterr().err
