"""Which depth mix runs: the rule of impl="auto", the explicit choice, clear errors, and the public
function's docstring example."""

from __future__ import annotations

import doctest
import importlib.util

import pytest
import torch

import depthattn.ops.depth_mix as depth_mix_module
from depthattn.ops.depth_mix import (
    IMPLS,
    auto_impl,
    check_impl,
    depth_mix,
    depth_mix_reference,
)


def inputs(dtype=torch.float64, B=1, T=5, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, 4, T, 8, generator=gen, dtype=dtype).requires_grad_(requires_grad)
    k, v = (torch.randn(B, 2, T, 8, generator=gen, dtype=dtype) for _ in range(2))
    return q, [k], [v], k, v


def test_training_reads_the_sources_in_place():
    assert auto_impl(torch.randn(1, 4, 3, 8, requires_grad=True)) == "unstacked"


def test_decoding_stacks_and_prefill_reads_in_place():
    with torch.no_grad():
        assert auto_impl(torch.randn(1, 4, 1, 8, requires_grad=True)) == "inference"
        assert auto_impl(torch.randn(2, 4, 4, 8)) == "inference"  # 8 tokens: FEW_TOKENS
        assert auto_impl(torch.randn(3, 4, 3, 8)) == "unstacked"  # 9
    assert auto_impl(torch.randn(64, 4, 1, 8)) == "unstacked"  # no gradient wanted of q


def test_compiled_graphs_take_the_inference_mix_only_without_gradients(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q = torch.randn(32, 4, 1, 8)
    with torch.no_grad():
        assert auto_impl(q) == "inference"  # compiled decoding, even at 32 tokens
    assert auto_impl(q.requires_grad_()) == "unstacked"  # compiled training


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_takes_pytorch_on_cuda_too():
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(1, 4, 64, 8, device="cuda", dtype=dtype)
        assert auto_impl(q.requires_grad_()) == "unstacked"


def test_auto_never_takes_triton():
    """Whatever the tensors, the rule names PyTorch implementations only: Triton is opt-in."""
    seen = set()
    for grad in (False, True):
        for B, T in [(1, 1), (2, 4), (4, 64)]:
            with torch.set_grad_enabled(grad):
                seen.add(auto_impl(torch.randn(B, 4, T, 8, requires_grad=grad)))
    assert seen == {"unstacked", "inference"}


@pytest.mark.parametrize("impl", [name for name in IMPLS if name != "triton"])
def test_every_choice_equals_the_reference(impl):
    args = inputs()
    torch.testing.assert_close(depth_mix(*args, impl=impl), depth_mix_reference(*args),
                               atol=1e-12, rtol=0)


def test_an_explicit_choice_runs_that_implementation(monkeypatch):
    calls = []
    monkeypatch.setitem(depth_mix_module._EAGER, "reference",
                        lambda *args: calls.append("reference") or depth_mix_reference(*args))
    depth_mix(*inputs(requires_grad=True), impl="reference")
    depth_mix(*inputs(requires_grad=True))  # auto: unstacked
    assert calls == ["reference"]


def test_unknown_names_are_refused_with_the_allowed_ones():
    message = (r"depth-mix impl \('triton9'\) is unknown; allowed: auto, reference, unstacked, "
               r"inference, triton")
    with pytest.raises(ValueError, match=message):
        check_impl("triton9")
    with pytest.raises(ValueError, match=message):
        depth_mix(*inputs(), impl="triton9")


def test_triton_without_cuda_or_interpreter_is_refused_before_any_work(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="'triton' cannot run on cpu: it needs a CUDA device"):
        depth_mix(*inputs(torch.float32), impl="triton")


def test_triton_refuses_float64(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    with pytest.raises(ValueError, match="'triton' computes in float32 and does not take float64"):
        depth_mix(*inputs(torch.float64), impl="triton")


def test_missing_triton_is_named(monkeypatch):
    monkeypatch.setattr(depth_mix_module, "_triton_installed", lambda: False)
    with pytest.raises(ValueError, match="'triton' needs the triton package, which is not"):
        depth_mix(*inputs(torch.float32), impl="triton")


def test_compiled_graph_traces_the_mix_without_a_break():
    # An import inside the traced code is a graph break in every layer (a looped model's many
    # applications then exhaust dynamo's recompile limit): the eager paths are imported up front.
    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 2, 3, 4, requires_grad=True) for _ in range(3))
    sources = [torch.randn(1, 2, 3, 4) for _ in range(2)]

    def mix(q, k, v):
        return depth_mix(q, sources, sources, k, v)

    compiled = torch.compile(mix, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), depth_mix_reference(q, sources, sources, k, v),
                               rtol=1e-6, atol=1e-6)


def test_the_docstring_example_runs():
    finder = doctest.DocTestFinder()
    (test,) = finder.find(depth_mix, "depth_mix", globs={"torch": torch, "depth_mix": depth_mix})
    result = doctest.DocTestRunner().run(test)
    assert result.attempted == 7 and result.failed == 0
