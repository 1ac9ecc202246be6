"""The command's error contract: the project's own errors (DepthAttnError) and the machine's
(OSError) are one line with exit status 2; anything unexpected keeps its traceback."""

from __future__ import annotations

import argparse

import pytest

from depthattn import DepthAttnError
from depthattn.cli import main


def run_raising(monkeypatch, error: BaseException) -> int:
    def parse(argv):
        def run(args):
            raise error
        return argparse.Namespace(command="train", run=run)

    monkeypatch.setattr("depthattn.cli.parse_args", parse)
    return main(["train"])


@pytest.mark.parametrize("error", [DepthAttnError("stride (0) must be an integer >= 1"),
                                   OSError(28, "No space left on device")])
def test_own_and_machine_errors_are_one_line(monkeypatch, capsys, error):
    assert run_raising(monkeypatch, error) == 2
    err = capsys.readouterr().err
    assert err.startswith("depthattn train: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   ValueError("not enough values to unpack (expected 3, got 2)"),
                                   TypeError("forward() got an unexpected keyword argument")])
def test_anything_unexpected_keeps_its_traceback(monkeypatch, error):
    with pytest.raises(type(error)) as raised:
        run_raising(monkeypatch, error)
    assert raised.value is error


def test_our_error_is_a_value_error():
    """Callers that catch bad input as ValueError, the usual way, catch ours too."""
    assert issubclass(DepthAttnError, ValueError)
