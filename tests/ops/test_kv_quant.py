"""KV-cache storage formats: the round trip stays within each format's stated bound, a
deliberately coarser format breaks the bound, and int8 keeps one scale per head and token."""

from __future__ import annotations

import pytest
import torch

from depthattn.ops.kv_quant import (
    FLOAT8_E4M3_MAX,
    KV_FORMATS,
    check_kv_format,
    quantize_int8,
    round_trip,
)


def sample(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 17, 16, generator=g) * torch.logspace(-3, 2, 16)  # many magnitudes
    x[0, 0, 0] = 0.0  # an all-zero head row
    return x


def bound(x: torch.Tensor, kv_format: str) -> torch.Tensor:
    if kv_format == "float32":
        return torch.zeros_like(x)
    if kv_format == "bfloat16":
        return x.abs() * 2.0 ** -8
    if kv_format == "float8_e4m3":
        return x.abs() * 2.0 ** -4 + 2.0 ** -10
    scale = x.abs().amax(-1, keepdim=True) / 127
    return scale.expand_as(x) / 2 * (1 + 1e-6)


@pytest.mark.parametrize("kv_format", KV_FORMATS)
def test_round_trip_within_the_stated_bound(kv_format):
    x = sample()
    error = (round_trip(x, kv_format) - x).abs()
    assert bool((error <= bound(x, kv_format)).all()), float((error - bound(x, kv_format)).max())
    if kv_format != "float32":
        assert error.max() > 0  # it really is lossy


def test_a_coarser_format_breaks_the_int8_bound():
    """Guard: the int8 bound is tight enough to reject a 6-bit quantiser."""
    x = sample(1)
    scale = x.abs().amax(-1, keepdim=True) / 31
    coarse = torch.round(x / scale) * scale
    assert not bool(((coarse - x).abs() <= bound(x, "int8")).all())


def test_int8_has_one_scale_per_head_and_token():
    x = sample()
    codes, scale = quantize_int8(x)
    assert codes.dtype == torch.int8 and codes.shape == x.shape
    assert scale.shape == (*x.shape[:-1], 1)
    assert int(codes.abs().max()) == 127
    assert bool((codes[0, 0, 0] == 0).all())


def test_float8_saturates_instead_of_overflowing():
    x = torch.tensor([1e4, -1e4, 1.0])
    assert round_trip(x, "float8_e4m3").tolist() == [FLOAT8_E4M3_MAX, -FLOAT8_E4M3_MAX, 1.0]


def test_unknown_format_is_named():
    with pytest.raises(ValueError, match=r"kv_format \('int4'\) is unknown; allowed: .*int8"):
        check_kv_format("int4")
