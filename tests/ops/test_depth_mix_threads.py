"""Forcing a depth-mix implementation is per thread (and per block with ``use_depth_mix``):
one thread forcing one never changes what another thread's model computes with."""

from __future__ import annotations

import threading

import pytest
import torch

from depthattn.ops.depth_mix import set_depth_mix_impl, use_depth_mix
from depthattn.ops.depth_mix.dispatch import (
    forced_depth_mix,
    get_depth_mix_impl,
    select_depth_mix,
)


def test_use_depth_mix_forces_inside_the_block_and_restores_after():
    q = torch.randn(1, 4, 3, 8)
    with use_depth_mix("reference"):
        assert select_depth_mix(q) is get_depth_mix_impl("reference")
        with use_depth_mix("recompute"):
            assert forced_depth_mix() == "recompute"
        assert forced_depth_mix() == "reference"
    assert forced_depth_mix() is None
    with pytest.raises(ValueError, match=r"implementation \('fast'\) is unknown"):
        with use_depth_mix("fast"):
            pass


def test_threads_force_implementations_independently():
    """Two threads interleave forcing and reading, step by step (a barrier between each): with
    a process-wide switch the second thread's choice would show up in the first."""
    barrier = threading.Barrier(2)
    seen: dict[str, list] = {"reference": [], "recompute": []}
    q = torch.randn(1, 4, 3, 8)

    def worker(name: str) -> None:
        for _ in range(20):
            with use_depth_mix(name):
                barrier.wait()  # both threads are inside their blocks now
                seen[name].append(select_depth_mix(q))
                barrier.wait()
            barrier.wait()
            seen[name].append(forced_depth_mix())

    threads = [threading.Thread(target=worker, args=(name,)) for name in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for name, results in seen.items():
        assert results[0::2] == [get_depth_mix_impl(name)] * 20
        assert results[1::2] == [None] * 20
    assert forced_depth_mix() is None  # the main thread never saw either


def test_set_depth_mix_impl_in_a_thread_leaves_the_others_alone():
    set_depth_mix_impl("reference")
    done = threading.Event()

    def other() -> None:
        set_depth_mix_impl("recompute")
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(timeout=60)
    assert done.is_set() and forced_depth_mix() == "reference"
