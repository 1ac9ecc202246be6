"""A one-time check of a fast depth mix on one device and dtype, before the automatic choice uses
it there.

The Triton kernel is compiled on the machine that runs it, for its GPU and by its Triton
version, which the test suite may never have met; a kernel that compiles can still compute wrong
numbers there. So before the dispatcher picks it by itself on a (device, dtype), ``verified``
runs it once at a tiny shape, forward and backward, against the reference in float64, within the
tests' own tolerance for that dtype (``tolerances.py``). The answer is kept for the process. A
mismatch or an exception is reported in one warning that says why, and the automatic choice then
takes the PyTorch implementations there.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable

import torch

from depthattn.ops.depth_mix.reference import depth_mix_reference
from depthattn.ops.depth_mix.tolerances import excess, tolerance_for

DepthMixFn = Callable[..., torch.Tensor]

# B, H, H_kv, T, d, n: groups of 2 query heads, two sources; at d = 64 the kernel takes 32 tokens
# per program, so T = 37 spans two programs and masks most of the second.
SHAPE = (2, 4, 2, 37, 64, 2)

# (implementation, device, dtype) → None if it passed, else why not. Written under the lock, read
# without it (a dict look-up: the dispatcher asks on every call), so the check runs once even when
# threads start together.
_results: dict[tuple[str, torch.device, torch.dtype], str | None] = {}
_lock = threading.Lock()
_NOT_RUN = object()


def verified(name: str, load: Callable[[], DepthMixFn], device: torch.device | str,
             dtype: torch.dtype) -> bool:
    """Whether implementation ``name`` (``load()`` returns it, or raises why it cannot run)
    matches the reference on ``device`` in ``dtype``. Checked on the first call for each
    (name, device, dtype), with one warning if it fails; later calls read the answer."""
    key = _key(name, device, dtype)
    if key not in _results:
        with _lock:
            if key not in _results:
                reason = _isolated(lambda: find_mismatch(load(), device, dtype), device)
                if reason is not None:
                    warnings.warn(
                        f"depth-mix implementation {name!r} failed its self-check on {key[1]} "
                        f"in {str(dtype).removeprefix('torch.')}: {reason}. The automatic choice "
                        f"takes the PyTorch implementations there; forcing {name!r} "
                        f"(DEPTHATTN_DEPTH_MIX or set_depth_mix_impl) skips the check.",
                        RuntimeWarning, stacklevel=2)
                _results[key] = reason
    return _results[key] is None


def known(name: str, device: torch.device | str, dtype: torch.dtype) -> bool | None:
    """Whether ``name`` passed its check on (device, dtype); None if it has not run there."""
    reason = _results.get(_key(name, device, dtype), _NOT_RUN)
    return None if reason is _NOT_RUN else reason is None


def _key(name: str, device: torch.device | str,
         dtype: torch.dtype) -> tuple[str, torch.device, torch.dtype]:
    return name, device if isinstance(device, torch.device) else torch.device(device), dtype


def find_mismatch(fn: DepthMixFn, device: torch.device | str,
                  dtype: torch.dtype) -> str | None:
    """Why ``fn`` fails the check on ``device`` in ``dtype`` (its output or a gradient beyond the
    tolerance, or of the wrong shape or dtype), or None when it passes. Exceptions propagate."""
    tolerance = tolerance_for(dtype)
    leaves, grad_out = check_inputs(torch.device(device), dtype)
    got = _mix_and_grads(fn, leaves, grad_out)
    exact = [x.detach().double().requires_grad_() for x in leaves]
    want = _mix_and_grads(depth_mix_reference, exact, grad_out.double())
    n = SHAPE[-1]
    names = ["ṽ", "grad q", *[f"grad k{j}" for j in range(n)], "grad key",
             *[f"grad v{j}" for j in range(n)], "grad value"]
    for i, (name, g, w) in enumerate(zip(names, got, want)):
        atol, rtol = ((tolerance.atol, tolerance.rtol) if i == 0
                      else (tolerance.grad_atol, tolerance.grad_rtol))
        if g.shape != w.shape or g.dtype != dtype:
            return f"{name} is {tuple(g.shape)} {g.dtype}, not {tuple(w.shape)} {dtype}"
        ratio = excess(g, w, atol, rtol)
        if not ratio <= 1:  # also catches NaN
            error = (g.double() - w).abs().max().item()
            return (f"{name} is off by up to {error:.3g} (largest |reference| "
                    f"{w.abs().max().item():.3g}), {ratio:.3g}× the tolerance "
                    f"{atol:g} + {rtol:g}·|reference|")
    return None


def check_inputs(device: torch.device, dtype: torch.dtype) -> tuple[list[torch.Tensor],
                                                                  torch.Tensor]:
    """Leaves (B, T, heads, d) for q, the n+1 keys and the n+1 values (standard deviation 2, as
    the tolerances assume), and an output gradient (B, H_kv, T, d). Drawn on the CPU from their
    own generator: the process's random state is left alone."""
    B, H, H_kv, T, d, n = SHAPE
    gen = torch.Generator().manual_seed(0)

    def leaf(heads: int) -> torch.Tensor:
        x = torch.randn(B, T, heads, d, generator=gen, dtype=torch.float64) * 2
        return x.to(device=device, dtype=dtype).requires_grad_()

    leaves = [leaf(H), *[leaf(H_kv) for _ in range(2 * (n + 1))]]
    grad_out = torch.randn(B, H_kv, T, d, generator=gen, dtype=torch.float64)
    return leaves, grad_out.to(device=device, dtype=dtype)


def _mix_and_grads(fn: DepthMixFn, leaves: list[torch.Tensor],
                   grad_out: torch.Tensor) -> list[torch.Tensor]:
    """ṽ and the gradient of every leaf, the inputs being transposed views of the leaves
    (B, heads, T, d), the memory layout of the model's attention."""
    n = SHAPE[-1]
    q, *kv = [x.transpose(1, 2) for x in leaves]
    keys, values = kv[:n + 1], kv[n + 1:]
    out = fn(q, keys[:-1], values[:-1], keys[-1], values[-1])
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_out)]


def _isolated(check: Callable[[], str | None], device: torch.device | str) -> str | None:
    """``check()`` in a fresh thread, which inherits none of the caller's thread-local state:
    no_grad or inference mode, autocast, saved-tensor hooks (activation checkpointing packs
    every tensor saved while it is on), a forced implementation. An exception is the reason."""
    device = torch.device(device)
    result: list[str | None] = []

    def run() -> None:
        try:
            with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
                result.append(check())
        except Exception as error:  # noqa: BLE001  any failure to run is a failed check
            result.append(f"{type(error).__name__}: {str(error).strip()[:500]}")

    thread = threading.Thread(target=run, name="depth-mix self-check")
    thread.start()
    thread.join()
    return result[0] if result else "the check's thread ended without an answer"
