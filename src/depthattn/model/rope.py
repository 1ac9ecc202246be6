"""Rotary position embedding, rotate-half convention (as Qwen3 / Llama in transformers).

Unscaled RoPE is computed here. Scaled RoPE (``rope_parameters`` of type linear, dynamic, yarn
or llama3, as in Hugging Face configs) takes its frequencies and attention scale from
transformers' own ``ROPE_INIT_FUNCTIONS``, so a converted model rotates exactly as the original.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from depthattn.model.qwen3_names import rope_config, rope_type


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions; the angles are computed in float32.

    ``config``: a ``ModelConfig`` or a ``DepthAttnConfig`` (reads ``rope_dim`` or else
    ``head_dim``, ``rope_theta``,
    ``rope_parameters`` and ``max_seq_len``). Dynamic NTK scaling recomputes the frequencies
    for a call whose positions reach past ``max_seq_len``, from that call's longest position
    (a function of the positions alone, so a call gives the same result whatever ran before)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        # the dims rotated per head: d_rope of an MLA model, else the whole head
        self.head_dim = getattr(config, "rope_dim", None) or config.head_dim
        self.theta = config.rope_theta
        self.max_seq_len = config.max_seq_len
        self.rope_type = rope_type(config.rope_parameters)
        # the Hugging Face config transformers' frequency functions read (scaled RoPE only)
        self.hf_config = None if self.rope_type == "default" else rope_config(
            self.head_dim, self.theta, config.rope_parameters, self.max_seq_len)
        self.attention_scaling = 1.0
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, seq_len: int | None = None) -> torch.Tensor:
        if self.hf_config is None:
            exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
            return 1.0 / (self.theta ** exponents)
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        with torch.device("cpu"):  # also when the model is being built on the meta device
            inv_freq, self.attention_scaling = ROPE_INIT_FUNCTIONS[self.rope_type](
                self.hf_config, "cpu", seq_len=seq_len)
        return inv_freq.float()

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

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) → cos, sin (B, T, d) in ``x``'s dtype (transformers' signature)."""
        inv_freq = self.inv_freq
        if self.rope_type == "dynamic":
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.max_seq_len:
                inv_freq = self._inv_freq(seq_len).to(inv_freq.device)
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, d/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, d)
        cos, sin = angles.cos(), angles.sin()
        if self.attention_scaling != 1.0:  # yarn's mscale
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, d); cos, sin (B, T, d)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin
