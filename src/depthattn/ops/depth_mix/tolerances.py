"""How close every depth mix must come to the reference, per dtype: one table, read by the tests
(tests/ops/test_depth_mix_implementations.py) and by the dispatcher's self-check (self_check.py).

The yardstick is ``depth_mix_reference`` computed in float64 from the same inputs (and, for
gradients, the same output gradient). An implementation passes where, element by element,

    |got − want| ≤ atol + rtol · |want|          (grad_atol, grad_rtol for every gradient)

The absolute terms are calibrated for inputs of standard deviation 2, what the tests and the
self-check make (outputs and gradients then reach about 10).

bfloat16 and float16: a correct path computes in float32 and rounds once, to at most half a unit
in the last place (ulp) of the result: rtol is one ulp (the relative spacing at 1.0, the widest),
which leaves room for Triton's interpreter, whose float32 → bfloat16 cast truncates (a full ulp).
The broken variant that the tests keep as a counter-example, the reference with its scores and
softmax in bfloat16 (float16) instead of float32, errs by tens of ulps. Measured on the tests'
inputs (``test_low_precision_rounds_only_the_result``: five shapes, queries scaled 1× and 4×),
as the worst |got − want| / (atol + rtol · |want|), which passes at ≤ 1; the last column is the
broken variant's closest call, its smallest worst-case over the shapes it must fail:

    bfloat16, atol 1e-3, rtol 2⁻⁷         forward  gradients  (closest call)
      unstacked, inference, recompute       0.47      0.46
      triton (interpreter)                  0.97      0.93
      broken: softmax in bfloat16            50        56         2.7
    float16, atol 1e-3, rtol 2⁻¹⁰
      unstacked, inference, recompute,      0.39      0.42
        triton (interpreter)
      broken: softmax in float16             16        16         1.6

The bfloat16 test these replace (0.1 absolute against a float32 reference, one shape) passed the
broken variant, and the Triton kernel's backward as it was, which took Σ_i α_i ∂L/∂α_i as
do · ṽ_l from the rounded ṽ_l: its bfloat16 gradients score up to 655 here (triton_kernel.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    atol: float  # ṽ, absolute
    rtol: float  # ṽ, relative to |want|
    grad_atol: float  # every gradient
    grad_rtol: float


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(1e-12, 0.0, 1e-11, 0.0),  # pins the math: only summation order
    torch.float32: Tolerance(1e-5, 0.0, 1e-4, 0.0),  # float32 accumulation order
    torch.bfloat16: Tolerance(1e-3, 2.0**-7, 1e-3, 2.0**-7),  # one bfloat16 ulp (module doc)
    torch.float16: Tolerance(1e-3, 2.0**-10, 1e-3, 2.0**-10),  # one float16 ulp
}


def tolerance_for(dtype: torch.dtype) -> Tolerance:
    """The tolerance of ``dtype``; a dtype without one is an error that names those with one."""
    if dtype not in TOLERANCES:
        known = ", ".join(str(d).removeprefix("torch.") for d in TOLERANCES)
        raise ValueError(f"no depth-mix tolerance is defined for {dtype}; defined for: {known}")
    return TOLERANCES[dtype]


def excess(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> float:
    """max |got − want| / (atol + rtol · |want|) over the elements: ≤ 1 passes, NaN fails."""
    got, want = got.detach().double(), want.detach().double()
    if want.numel() == 0:
        return 0.0
    ratio = (got - want).abs() / (atol + rtol * want.abs())
    return float("nan") if not torch.isfinite(ratio).all() else ratio.max().item()
