"""Pick a depth-mix implementation: the fastest one available for the tensors, or a forced one.

Implementations, all with the signature of ``depth_mix_reference`` (without ``return_weights``)
and all tested against it, forward and backward:

    reference  | stacks the n+1 keys and values: the yardstick
    unstacked  | reads the sources in place; autograd keeps the weights
    inference  | stacks and mixes with two matrix products: fewest operations, for decoding
    recompute  | reads the sources in place; hand-written backward recomputes the weights from
               | one log-sum-exp per token (the Triton kernel's math in PyTorch)
    compiled   | ``torch.compile`` of ``unstacked`` (CPU and GPU; compiles on first use)
    triton     | one fused kernel forward, one backward (CUDA; CPU only under TRITON_INTERPRET=1)

The automatic choice takes Triton on a (device, dtype) only once the kernel has passed a
self-check there (``self_check.py``); a forced choice is taken as it is.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator

import torch

from depthattn.ops.depth_mix import self_check
from depthattn.ops.depth_mix.inference import depth_mix_inference
from depthattn.ops.depth_mix.unstacked import depth_mix_unstacked

DepthMixFn = Callable[..., torch.Tensor]

# name -> "module:function", imported on first use so that triton is never imported on CPU.
_LOCATIONS: dict[str, str] = {
    "reference": "depthattn.ops.depth_mix.reference:depth_mix_reference",
    "unstacked": "depthattn.ops.depth_mix.unstacked:depth_mix_unstacked",
    "inference": "depthattn.ops.depth_mix.inference:depth_mix_inference",
    "recompute": "depthattn.ops.depth_mix.recompute:depth_mix_recompute",
    "compiled": "depthattn.ops.depth_mix.compiled:depth_mix_compiled",
    "triton": "depthattn.ops.depth_mix.triton_kernel:depth_mix_triton",
}
IMPLEMENTATIONS = tuple(_LOCATIONS)

_ENV_VAR = "DEPTHATTN_DEPTH_MIX"
# Up to this many tokens (batch × new tokens) per call, launching operations costs more than
# stacking the sources: decoding takes the stacked path (benchmarks/depth_mix_kernel.py).
_FEW_TOKENS = 8
# Device types on which the automatic choice considers the Triton kernel (after its self-check).
# A module constant so that the tests can add "cpu" and exercise the check through Triton's
# interpreter or with a stand-in kernel.
TRITON_AUTO_DEVICE_TYPES = frozenset({"cuda"})
# The forced implementation lives in a context variable, not a module global: each thread (and
# each asyncio task) has its own, so one thread forcing "reference" for a check never changes
# what a model running in another thread computes with. (Autograd's CUDA worker threads do not
# inherit it: a block recomputed there by activation checkpointing takes the automatic choice,
# which every implementation matches to within the tested tolerances.)
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("depth_mix_impl",
                                                                      default=None)
_loaded: dict[str, DepthMixFn] = {}
# What a compiled graph traces, imported here: an import inside the traced code would be a graph
# break in every layer, and a looped model's many applications would then exhaust dynamo's
# recompile limit.
_COMPILED_IMPLS: dict[str, DepthMixFn] = {"unstacked": depth_mix_unstacked,
                                         "inference": depth_mix_inference}


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None  # once: this runs on every layer


def triton_usable(device: torch.device | str) -> bool:
    """Triton runs on CUDA devices, and on CPU tensors only through its interpreter."""
    if not _triton_installed():
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def triton_verified(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the Triton kernel passed its self-check on ``device`` in ``dtype`` (run on the
    first call, once per process; a failure, missing triton included, warns once)."""
    def load() -> DepthMixFn:
        if not triton_usable(device):
            raise RuntimeError("the triton package is not installed" if not _triton_installed()
                               else f"Triton cannot run on {device} (TRITON_INTERPRET is not 1)")
        return get_depth_mix_impl("triton")

    return self_check.verified("triton", load, device, dtype)


def available_depth_mix_impls(device: torch.device | str) -> list[str]:
    """The implementations that can run on ``device``, in the order of ``IMPLEMENTATIONS``."""
    return [name for name in IMPLEMENTATIONS if name != "triton" or triton_usable(device)]


def _check_known(name: str) -> None:
    if name not in _LOCATIONS:
        raise ValueError(f"depth-mix implementation ({name!r}) is unknown; allowed: "
                         f"{', '.join(IMPLEMENTATIONS)}")


def get_depth_mix_impl(name: str) -> DepthMixFn:
    """The implementation called ``name``, imported on first use."""
    _check_known(name)
    if name not in _loaded:
        module, function = _LOCATIONS[name].split(":")
        _loaded[name] = getattr(importlib.import_module(module), function)
    return _loaded[name]


def set_depth_mix_impl(name: str | None) -> None:
    """Force one implementation for every later call in this thread (None: automatic choice).
    ``use_depth_mix`` does it for a block only; the environment variable DEPTHATTN_DEPTH_MIX
    forces one for the whole process. A forced implementation runs without the automatic
    choice's self-check (a forced 'triton' runs even where that check failed); it still needs a
    device it can run on, and says so if it has none."""
    if name is not None:
        _check_known(name)
    _forced.set(name)


@contextlib.contextmanager
def use_depth_mix(name: str | None) -> Iterator[None]:
    """``with use_depth_mix("reference"): model(ids)`` — force an implementation inside the
    block, in this thread only, and restore the previous choice on leaving it. As with
    ``set_depth_mix_impl``, the forced one runs without the self-check."""
    if name is not None:
        _check_known(name)
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def forced_depth_mix() -> str | None:
    """The implementation forced in this thread (by call or block), or None."""
    return _forced.get()


def automatic_choice(q: torch.Tensor) -> str:
    """Inside ``torch.compile``, ``compiled_choice``.
    Otherwise Triton on CUDA (not for float64: it computes in float32) once it has passed its
    self-check on that device and dtype (``self_check.py``; run on the first call there, it
    warns once if it fails). Else the unstacked mix, the fastest eager path for training on CPU
    (1.01× vanilla's step on ``tiny``, against 1.04× for ``recompute``, which keeps less for
    backward), except for calls of a few tokens without gradient (decoding), where the stacked
    inference mix launches the fewest operations."""
    if torch.compiler.is_compiling():
        return compiled_choice(q)
    if (q.device.type in TRITON_AUTO_DEVICE_TYPES and q.dtype != torch.float64
            and _triton_checked(q)):
        return "triton"
    if torch.is_grad_enabled() and q.requires_grad:
        return "unstacked"
    return "inference" if q.shape[0] * q.shape[2] <= _FEW_TOKENS else "unstacked"


def compiled_choice(q: torch.Tensor) -> str:
    """Inside ``torch.compile``: with gradients, the unstacked mix, which Inductor fuses with
    its neighbours; without (compiled decoding), the stacked inference mix, whose two matrix
    products Inductor leaves to the BLAS: 1.03x vanilla's compiled decode step at batch 1 and
    32 on the quickstart model (CPU), against 0.87x for the unstacked mix at batch 32
    (benchmarks/decode.py --modes compiled)."""
    return "unstacked" if torch.is_grad_enabled() and q.requires_grad else "inference"


def _triton_checked(q: torch.Tensor) -> bool:
    known = self_check.known("triton", q.device, q.dtype)  # a dict look-up, on every call
    if known is not None:
        return known
    # The check launches work and waits for it, which a CUDA graph being captured forbids: until
    # it has run outside a capture, a captured graph records a PyTorch path (also correct).
    if q.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return triton_verified(q.device, q.dtype)


def select_depth_mix(q: torch.Tensor) -> DepthMixFn:
    if torch.compiler.is_compiling():
        # Traced into the graph once (see compiled_choice). Dynamo cannot read the context
        # variable (nor should a compiled step re-read the environment at every call), so
        # forcing applies to eager calls.
        return _COMPILED_IMPLS[compiled_choice(q)]
    name = _forced.get() or os.environ.get(_ENV_VAR) or automatic_choice(q)
    if name not in _LOCATIONS:
        raise ValueError(f"{_ENV_VAR} ({name!r}) names no depth-mix implementation; allowed: "
                         f"{', '.join(IMPLEMENTATIONS)}")
    if name == "triton" and not triton_usable(q.device):
        raise ValueError(f"depth-mix implementation 'triton' cannot run on {q.device}: it needs "
                         "a CUDA device and the triton package")
    return get_depth_mix_impl(name)


def depth_mix(q: torch.Tensor, source_keys: list[torch.Tensor],
              source_values: list[torch.Tensor], key: torch.Tensor,
              value: torch.Tensor) -> torch.Tensor:
    """ṽ_l from the sources' keys and mixed values; see ``depth_mix_reference`` for shapes."""
    return select_depth_mix(q)(q, source_keys, source_values, key, value)
