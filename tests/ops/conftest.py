"""Every depth-mix test starts and ends with no implementation forced."""

from __future__ import annotations

import pytest

from depthattn.ops.depth_mix import set_depth_mix_impl


@pytest.fixture(autouse=True)
def nothing_forced(monkeypatch):
    monkeypatch.delenv("DEPTHATTN_DEPTH_MIX", raising=False)
    set_depth_mix_impl(None)
    yield
    set_depth_mix_impl(None)
