"""Rotary position embedding, rotate-half convention (as Qwen3 / Llama in transformers)."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions; the angles are computed in float32."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        return 1.0 / (self.theta ** exponents)

    def reset_parameters(self) -> None:
        """Recompute the table (after materialising a model built on the meta device)."""
        self.inv_freq = self._inv_freq().to(self.inv_freq.device)

    def _apply(self, fn, recurse=True):
        # `model.to(torch.bfloat16)` would round the frequencies to bf16, and the rotation error
        # then grows with the distance between tokens; recompute the table in float32 instead.
        super()._apply(fn, recurse)
        if self.inv_freq.device.type != "meta":
            self.reset_parameters()
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) → cos, sin (B, T, d) in ``dtype``."""
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, d/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, d)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, d); cos, sin (B, T, d)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin
