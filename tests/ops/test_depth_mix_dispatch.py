"""Which depth mix runs: the automatic choice, forcing by call or environment, clear errors."""

from __future__ import annotations

import pytest
import torch

from depthattn.ops.depth_mix import depth_mix, set_depth_mix_impl
from depthattn.ops.depth_mix.dispatch import (
    IMPLEMENTATIONS,
    automatic_choice,
    available_depth_mix_impls,
    get_depth_mix_impl,
    select_depth_mix,
)


def test_cpu_training_reads_the_sources_in_place():
    q = torch.randn(1, 4, 3, 8, requires_grad=True)
    assert automatic_choice(q) == "unstacked"


def test_cpu_decoding_stacks_and_prefill_reads_in_place():
    with torch.no_grad():
        assert automatic_choice(torch.randn(1, 4, 1, 8, requires_grad=True)) == "inference"
        assert automatic_choice(torch.randn(2, 4, 4, 8)) == "inference"
        assert automatic_choice(torch.randn(3, 4, 3, 8)) == "unstacked"
    assert automatic_choice(torch.randn(64, 4, 1, 8)) == "unstacked"


def test_forcing_by_call_and_by_environment(monkeypatch):
    q = torch.randn(1, 4, 3, 8)
    set_depth_mix_impl("reference")
    assert select_depth_mix(q) is get_depth_mix_impl("reference")
    set_depth_mix_impl(None)
    monkeypatch.setenv("DEPTHATTN_DEPTH_MIX", "recompute")
    assert select_depth_mix(q) is get_depth_mix_impl("recompute")


def test_forced_result_equals_the_automatic_one():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 5, 8, generator=gen, dtype=torch.float64),
               torch.randn(1, 2, 5, 8, generator=gen, dtype=torch.float64),
               torch.randn(1, 2, 5, 8, generator=gen, dtype=torch.float64))
    automatic = depth_mix(q, [k], [v], k, v)
    set_depth_mix_impl("reference")
    torch.testing.assert_close(depth_mix(q, [k], [v], k, v), automatic, atol=1e-12, rtol=0)


def test_unknown_names_are_refused_with_the_allowed_ones(monkeypatch):
    with pytest.raises(ValueError, match=r"implementation \('triton9'\) is unknown; allowed: "
                                         r"reference, unstacked, inference, recompute, compiled, triton"):
        set_depth_mix_impl("triton9")
    monkeypatch.setenv("DEPTHATTN_DEPTH_MIX", "fast")
    with pytest.raises(ValueError, match=r"DEPTHATTN_DEPTH_MIX \('fast'\) names no depth-mix"):
        select_depth_mix(torch.randn(1, 4, 3, 8))


def test_triton_without_cuda_or_interpreter_is_refused_before_any_work(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "triton" not in available_depth_mix_impls("cpu")
    set_depth_mix_impl("triton")
    with pytest.raises(ValueError, match="'triton' cannot run on cpu: it needs a CUDA device"):
        select_depth_mix(torch.randn(1, 4, 3, 8))


def test_every_implementation_is_listed_and_importable():
    assert IMPLEMENTATIONS == ("reference", "unstacked", "inference", "recompute", "compiled",
                               "triton")
    for name in available_depth_mix_impls("cpu"):
        assert callable(get_depth_mix_impl(name))


def test_compiled_graphs_take_the_inference_mix_only_without_gradients():
    from depthattn.ops.depth_mix.dispatch import compiled_choice

    q = torch.randn(32, 4, 1, 8)
    with torch.no_grad():
        assert compiled_choice(q) == "inference"  # compiled decoding
    assert compiled_choice(q.requires_grad_()) == "unstacked"  # compiled training


def test_compiled_graph_traces_the_mix_without_a_break(monkeypatch):
    # An import inside the traced code is a graph break in every layer (a looped model's many
    # applications then exhaust dynamo's recompile limit): nothing may be imported there, even
    # in a process that has not yet called any implementation eagerly.
    from depthattn.ops.depth_mix import dispatch

    monkeypatch.setattr(dispatch, "_loaded", {})
    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 2, 3, 4, requires_grad=True) for _ in range(3))
    sources = [torch.randn(1, 2, 3, 4) for _ in range(2)]

    def mix(q, k, v):
        return depth_mix(q, sources, sources, k, v)

    compiled = torch.compile(mix, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), get_depth_mix_impl("reference")(
        q, sources, sources, k, v), rtol=1e-6, atol=1e-6)
