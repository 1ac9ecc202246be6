"""The `depthattn` command: its subcommands (names and order pinned), each one's --help, and
``python -m depthattn --help`` in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import depthattn.cli
from depthattn.cli import COMMANDS, build_parser

EXPECTED = ["quickstart", "demo", "prepare", "train", "eval", "lm-eval", "compare", "convert",
            "generate", "flops", "analyze", "report"]


def test_the_commands_and_their_order():
    assert list(depthattn.cli.COMMANDS) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: depthattn {name}"), out[:200]
    description = " ".join(COMMANDS[name][0].split())  # argparse re-wraps it
    assert description in " ".join(out.split())


def test_python_m_depthattn_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "depthattn", "--help"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.startswith("usage: depthattn")
    assert "{" + ",".join(EXPECTED) + "}" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ")
              and not line.startswith("     ")]  # one entry per subcommand, then its help
    assert listed == EXPECTED, out
