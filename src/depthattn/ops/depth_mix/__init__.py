"""The depth mix of Depth-Attention (docs/method.md §3): one public function, ``depth_mix``.

Implementations, all with ``depth_mix_reference``'s signature and all tested against it, forward
and backward (tests/ops/depth_mix/):

    reference  | reference.py: stacks the n+1 keys and values; the yardstick, never chosen by "auto"
    unstacked  | unstacked.py: reads every source where it lives; training and prefill
    inference  | inference.py: stacks, two batched matrix products; decoding
    triton     | triton_kernel.py: one fused kernel forward, one backward; only when asked for

``impl="auto"`` is the rule below; the measurements behind it are in docs/depth_mix.md. A model
takes the explicit choice through ``CausalLM.set_depth_mix_impl``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from depthattn.ops.depth_mix.inference import depth_mix_inference
from depthattn.ops.depth_mix.reference import depth_mix_reference
from depthattn.ops.depth_mix.unstacked import depth_mix_unstacked
from depthattn.utils.errors import DepthAttnError

IMPLS = ("auto", "reference", "unstacked", "inference", "triton")
# Up to this many tokens (batch × new tokens) per call without gradient, launching operations
# costs more than stacking the sources: decoding takes the stacked mix (docs/depth_mix.md).
FEW_TOKENS = 8

_EAGER = {"reference": depth_mix_reference, "unstacked": depth_mix_unstacked,
          "inference": depth_mix_inference}


def check_impl(impl: str) -> None:
    """Raise ValueError unless ``impl`` is one of ``IMPLS``."""
    if impl not in IMPLS:
        raise DepthAttnError(f"depth-mix impl ({impl!r}) is unknown; allowed: {', '.join(IMPLS)}")


def auto_impl(q: torch.Tensor) -> str:
    """The rule of ``impl="auto"``, the same on every device; it never takes Triton.

    - with a gradient (training): ``unstacked``, which keeps only the weights for backward;
    - without (prefill, evaluation, decoding): ``inference`` for calls of at most FEW_TOKENS
      tokens (batch × new tokens) and ``unstacked`` for more; inside ``torch.compile``
      ``inference`` always, whose two matrix products Inductor leaves to the BLAS.
    """
    if torch.is_grad_enabled() and q.requires_grad:
        return "unstacked"
    if torch.compiler.is_compiling() or q.shape[0] * q.shape[2] <= FEW_TOKENS:
        return "inference"
    return "unstacked"


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton(q: torch.Tensor):
    """The Triton kernel, imported on first use, or a ValueError saying why it cannot run."""
    if not _triton_installed():
        raise DepthAttnError("depth-mix impl 'triton' needs the triton package, which is not "
                             "installed")
    interpreted = q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if q.device.type != "cuda" and not interpreted:
        raise DepthAttnError(f"depth-mix impl 'triton' cannot run on {q.device}: it needs a CUDA "
                             "device (or CPU tensors under TRITON_INTERPRET=1, Triton's "
                             "interpreter)")
    if q.dtype == torch.float64:
        raise DepthAttnError("depth-mix impl 'triton' computes in float32 and does not take "
                             "float64 inputs; use 'auto' or 'reference'")
    from depthattn.ops.depth_mix.triton_kernel import depth_mix_triton

    return depth_mix_triton


def depth_mix(q: torch.Tensor, source_keys: list[torch.Tensor],
              source_values: list[torch.Tensor], key: torch.Tensor, value: torch.Tensor,
              impl: str = "auto") -> torch.Tensor:
    """Mix the values of earlier layers into layer l's value, per token and kv head.

    Per token t and kv head g, with q̄_g the mean of the G = H / H_kv query heads of group g
    (docs/method.md §3, steps 1–4):

        α     = softmax([q̄_g · k_j,g / √d for j in S(l)] + [q̄_g · k_l,g / √d])   in float32
        ṽ_l,g = Σ_j α_j ṽ_j,g + α_l v_l,g                                     in value's dtype

    Args:
        q: (B, H, T, d) layer l's queries, after q_norm and RoPE.
        source_keys: n tensors (B, H_kv, T, d): the keys k_j of the source layers j ∈ S(l) at
            the same T tokens (what their KV caches hold).
        source_values: n tensors (B, H_kv, T, d): the sources' *mixed* values ṽ_j.
        key: (B, H_kv, T, d) layer l's own key k_l.
        value: (B, H_kv, T, d) layer l's raw value v_l.
        impl: "auto" (the rule of ``auto_impl``) or one implementation by name: "reference",
            "unstacked", "inference", "triton" (CUDA; CPU only under TRITON_INTERPRET=1).

    Returns:
        ṽ_l (B, H_kv, T, d) in ``value``'s dtype. B is the batch size, H and H_kv the query and
        kv heads (H a multiple of H_kv), T the new tokens of this call, d the head dim, n ≥ 0.

    Example:
        >>> B, H, H_kv, T, d, n = 2, 8, 2, 5, 64, 3
        >>> q = torch.randn(B, H, T, d)
        >>> keys = [torch.randn(B, H_kv, T, d) for _ in range(n)]
        >>> values = [torch.randn(B, H_kv, T, d) for _ in range(n)]
        >>> k, v = torch.randn(B, H_kv, T, d), torch.randn(B, H_kv, T, d)
        >>> depth_mix(q, keys, values, k, v).shape
        torch.Size([2, 2, 5, 64])
        >>> torch.allclose(depth_mix(q, keys, values, k, v, impl="reference"),
        ...                depth_mix(q, keys, values, k, v), atol=1e-6)
        True
    """
    check_impl(impl)
    if impl == "auto":
        impl = auto_impl(q)
    fn = _triton(q) if impl == "triton" else _EAGER[impl]
    return fn(q, source_keys, source_values, key, value)


__all__ = ["FEW_TOKENS", "IMPLS", "auto_impl", "check_impl", "depth_mix", "depth_mix_reference"]
