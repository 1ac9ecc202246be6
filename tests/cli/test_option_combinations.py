"""Options that only mean something together with another one are refused alone, before work."""

from __future__ import annotations

import pytest

from depthattn.cli import main


@pytest.mark.parametrize("argv, message", [
    (["compare", "--task-limit", "5"], "--task-limit applies to zero-shot tasks"),
    (["quickstart", "--task-limit", "5"], "--task-limit applies to zero-shot tasks"),
    (["eval", "some/run", "--prefill-chunk", "8"], "--prefill-chunk applies with --kv-cache"),
    (["eval", "some/run", "--kv-cache", "int8", "--tasks", "paper"], "not to --tasks"),
])
def test_an_option_without_its_partner_is_an_error(argv, message, capsys, tmp_path):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
