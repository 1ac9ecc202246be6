"""Storage formats of the KV cache: what the cache keeps of each key and (mixed) value, and how
attention gets it back.

- ``float32`` / ``bfloat16``: a plain cast (round to nearest even).
- ``float8_e4m3``: ``torch.float8_e4m3fn`` storage (4 exponent bits, 3 mantissa bits, finite
  range ±448), read back by an upcast; values beyond ±448 saturate. Every torch device stores
  it; no float8 arithmetic is needed, so this "emulates" float8 where the device lacks it.
- ``int8``: symmetric absmax quantisation with one float32 scale per head and token:
  ``scale = max_i |x_i| / 127`` over the head dimension, ``q = round(x / scale)``.

Error bounds (per element x, tested): float32 exact for float32 inputs; bfloat16
``|x̂ − x| <= 2^-8 |x|``; float8_e4m3 ``|x̂ − x| <= 2^-4 |x| + 2^-10`` for ``|x| <= 448`` (the
absolute term covers subnormals, spaced 2^-9); int8 ``|x̂ − x| <= scale / 2``.
"""

from __future__ import annotations

import torch

from depthattn.utils.errors import DepthAttnError

KV_FORMATS = ("float32", "bfloat16", "float8_e4m3", "int8")
STORAGE_DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float8_e4m3": torch.float8_e4m3fn, "int8": torch.int8}
INT8_MAX = 127
FLOAT8_E4M3_MAX = 448.0


def check_kv_format(kv_format: str | None) -> None:
    if kv_format is not None and kv_format not in KV_FORMATS:
        raise DepthAttnError(f"kv_format ({kv_format!r}) is unknown; allowed: None (the model's "
                             f"dtype), {', '.join(KV_FORMATS)}")


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., d) → int8 codes (..., d) and float32 scales (..., 1), absmax over the last dim."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True) / INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero rows stay zero
    codes = torch.round(x / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scale


def dequantize_int8(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (codes.float() * scale).to(dtype)


def to_storage(x: torch.Tensor, kv_format: str) -> torch.Tensor:
    """A float format's stored tensor (float8 saturates instead of overflowing to NaN)."""
    if kv_format == "float8_e4m3":
        x = x.float().clamp(-FLOAT8_E4M3_MAX, FLOAT8_E4M3_MAX)
    return x.to(STORAGE_DTYPE[kv_format])


def round_trip(x: torch.Tensor, kv_format: str) -> torch.Tensor:
    """What attention reads after storing ``x`` in ``kv_format`` (in x's dtype)."""
    if kv_format == "int8":
        return dequantize_int8(*quantize_int8(x), x.dtype)
    return to_storage(x, kv_format).to(x.dtype)
