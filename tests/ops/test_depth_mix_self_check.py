"""The automatic choice takes the Triton kernel only after it passed its self-check on that device
and dtype: a wrong or failing kernel falls back to PyTorch with one warning that says why.

On CPU the automatic choice is made to consider Triton on "cpu" too (``TRITON_AUTO_DEVICE_TYPES``)
and the kernel is replaced by a stand-in (wrong, raising or correct), or is the real one through
Triton's interpreter.
"""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import torch

from depthattn.ops.depth_mix import dispatch, self_check, set_depth_mix_impl
from depthattn.ops.depth_mix.dispatch import (
    automatic_choice,
    depth_mix,
    get_depth_mix_impl,
)
from depthattn.ops.depth_mix.reference import depth_mix_reference
from depthattn.ops.depth_mix.self_check import find_mismatch
from depthattn.ops.depth_mix.tolerances import tolerance_for
from tests.ops.test_depth_mix_implementations import softmax_in_low_precision


@pytest.fixture
def fresh(monkeypatch):
    """No check has run yet, and the automatic choice considers Triton on the CPU as well."""
    monkeypatch.setattr(self_check, "_results", {})
    monkeypatch.setattr(dispatch, "TRITON_AUTO_DEVICE_TYPES", frozenset({"cuda", "cpu"}))
    return monkeypatch


@pytest.fixture
def kernel(fresh):
    """Install ``fn`` as the Triton kernel, runnable anywhere; returns a list of its calls."""
    def install(fn):
        calls = []

        def counted(*args):
            calls.append(args[0].dtype)
            return fn(*args)

        fresh.setattr(dispatch, "triton_usable", lambda device: True)
        fresh.setitem(dispatch._loaded, "triton", counted)
        return calls

    return install


def inputs(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, 3, 8, generator=gen).to(dtype).requires_grad_()
    k, v = (torch.randn(1, 2, 3, 8, generator=gen).to(dtype) for _ in range(2))
    return q, [k], [v], k, v


def sign_error(q, source_keys, source_values, key, value):
    """A plausible kernel bug: the scores' sign flipped, so the softmax favours the worst match."""
    return depth_mix_reference(-q, source_keys, source_values, key, value)


def self_check_warnings(calls) -> list[str]:
    """The messages of the self-check warnings emitted while running ``calls()``."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")  # count every one, even a repeat from the same line
        calls()
    return [str(w.message) for w in record
            if w.category is RuntimeWarning and "self-check" in str(w.message)]


def test_a_wrong_kernel_falls_back_with_one_warning_per_dtype(kernel):
    calls = kernel(sign_error)
    args = inputs()
    choices = []
    (message,) = self_check_warnings(
        lambda: choices.extend([*(automatic_choice(args[0]) for _ in range(3)), depth_mix(*args)]))
    assert choices[:3] == ["unstacked"] * 3
    got = choices[3]
    assert message.startswith("depth-mix implementation 'triton' failed its self-check on cpu "
                              "in float32: ṽ is off by up to ")
    assert "× the tolerance 1e-05 + 0·|reference|" in message
    assert len(calls) == 1  # checked once, then never called again
    torch.testing.assert_close(got, depth_mix_reference(*args), atol=1e-6, rtol=0)
    q = inputs(torch.bfloat16)[0]
    (message,) = self_check_warnings(  # another dtype is another check
        lambda: [automatic_choice(q) for _ in range(2)])
    assert "on cpu in bfloat16: ṽ is off by" in message


def test_a_kernel_that_raises_falls_back_naming_the_exception(kernel):
    def broken(*args):
        raise RuntimeError("PTX assembly failed")

    kernel(broken)
    q = inputs()[0]
    with pytest.warns(RuntimeWarning, match=r"failed its self-check on cpu in float32: "
                                            r"RuntimeError: PTX assembly failed\."):
        assert automatic_choice(q) == "unstacked"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the answer is kept: no second warning
        assert automatic_choice(q) == "unstacked"


def test_missing_triton_falls_back_with_one_warning(fresh):
    fresh.setattr(dispatch, "_triton_installed", lambda: False)
    with pytest.warns(RuntimeWarning, match="RuntimeError: the triton package is not installed"):
        assert automatic_choice(inputs()[0]) == "unstacked"


def test_a_correct_kernel_is_chosen_after_its_check(kernel):
    calls = kernel(get_depth_mix_impl("recompute"))
    args = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert automatic_choice(args[0]) == "triton"
        assert dispatch.select_depth_mix(args[0]) is dispatch._loaded["triton"]
        depth_mix(*args)
    assert calls == [torch.float32, torch.float32]  # the check, then the call


def test_the_real_kernel_passes_its_check_through_the_interpreter(fresh):
    if not dispatch.triton_usable("cpu"):
        pytest.skip("Triton's interpreter is off (TRITON_INTERPRET=1 is set without a GPU)")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        args = inputs(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert automatic_choice(args[0]) == "triton", dtype
        tolerance = tolerance_for(dtype)
        torch.testing.assert_close(depth_mix(*args).double(), depth_mix_reference(
            *[[x.double() for x in a] if isinstance(a, list) else a.double() for a in args]),
            atol=tolerance.atol, rtol=tolerance.rtol)


def test_forcing_triton_runs_it_without_the_check(kernel):
    calls = kernel(sign_error)
    set_depth_mix_impl("triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        depth_mix(*inputs())
    assert len(calls) == 1 and self_check._results == {}


def test_the_check_ignores_the_callers_modes_and_random_state(kernel):
    """Inference mode, autocast and saved-tensor hooks of the caller (a model under
    activation checkpointing) would each break a check run in the caller's thread."""
    kernel(get_depth_mix_impl("recompute"))
    q = inputs()[0]
    rng = torch.get_rng_state()

    def refuse(tensor):
        raise AssertionError("the caller's saved-tensor hook was used")

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), \
            torch.autograd.graph.saved_tensors_hooks(refuse, lambda t: t), \
            warnings.catch_warnings():
        warnings.simplefilter("error")
        assert automatic_choice(q) == "triton"
    assert torch.equal(rng, torch.get_rng_state())


def test_threads_that_start_together_share_one_check(kernel):
    def slow_and_correct(*args):
        time.sleep(0.2)  # long enough for every thread to arrive while the check runs
        return get_depth_mix_impl("recompute")(*args)

    calls = kernel(slow_and_correct)
    q = inputs()[0]
    barrier = threading.Barrier(4)
    choices = []

    def worker():
        barrier.wait()
        choices.append(automatic_choice(q))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert choices == ["triton"] * 4 and len(calls) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_check_passes_every_pytorch_path(dtype):
    for name in ("unstacked", "inference", "recompute"):
        assert find_mismatch(get_depth_mix_impl(name), "cpu", dtype) is None, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_check_rejects_a_softmax_in_low_precision(dtype):
    reason = find_mismatch(softmax_in_low_precision, "cpu", dtype)
    assert reason is not None and reason.startswith("ṽ is off by up to ")


def test_a_dtype_without_a_tolerance_is_named():
    with pytest.raises(ValueError, match="no depth-mix tolerance is defined for torch.int8; "
                                         "defined for: float64, float32, bfloat16, float16"):
        tolerance_for(torch.int8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_kernel_passes_its_check_and_is_chosen(fresh):
    pytest.importorskip("triton")
    from depthattn.ops.depth_mix.triton_kernel import depth_mix_triton

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert find_mismatch(depth_mix_triton, "cuda", dtype) is None, dtype
        q = inputs(dtype)[0].detach().cuda().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert automatic_choice(q) == "triton", dtype


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_check_runs_while_a_cuda_graph_is_captured(fresh):
    fresh.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert automatic_choice(inputs()[0].detach().cuda().requires_grad_()) == "unstacked"
    assert self_check._results == {}
