"""``DepthAttnStaticCache``: the fixed-shape cache of mixed values as a ``transformers.Cache``,
for ``generate(..., cache_implementation="static")`` and its compiled decoding.

It holds a core ``StaticKVCache`` (allocated at the first forward, when the batch is known) and
says it is compileable, so that transformers compiles the forward of the decoding steps. The
attention mask transformers tracks grows by a column per step; ``static_padding_mask`` gives the
forward a (B, max_len) one instead, so that every step has the same shapes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from depthattn.model.cache import StaticKVCache


class DepthAttnStaticCache(Cache):
    fixed_shape = True  # Decoder.forward: attention over every slot, masked

    def __init__(self, config: Any, max_len: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        """config: the core ``ModelConfig`` (layers, kv heads, head dim); dtype and device: the
        model's."""
        super().__init__(layers=[])
        self.config, self.max_len = config, max_len
        self._dtype, self._device = dtype, device
        self.inner: StaticKVCache | None = None

    # --- what Decoder.forward uses: the core static cache's --------------------------------
    @property
    def length(self) -> int:
        return 0 if self.inner is None else self.inner.length

    @property
    def batch_size(self) -> int:
        return -1 if self.inner is None else self.inner.batch_size

    def past_valid(self) -> torch.Tensor:
        return self.inner.past_valid()

    def begin(self, new_valid: torch.Tensor | None, num_new: int,
              batch_size: int) -> tuple[int | None, torch.Tensor, torch.Tensor]:
        if self.inner is None:  # the batch is known now
            self.inner = StaticKVCache(self.config.num_applications, batch_size, self.max_len,
                                       self.config.num_kv_heads, self.config.head_dim,
                                       dtype=self._dtype, device=self._device)
        return self.inner.begin(new_valid, num_new, batch_size)

    def attention_mask(self) -> torch.Tensor:
        return self.inner.attention_mask()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.update(key_states, value_states, layer_idx)

    def end(self, num_new: int) -> None:
        self.inner.end(num_new)

    def new_columns(self, padding_mask: torch.Tensor, num_new: int) -> torch.Tensor:
        if self.inner is None:  # nothing written yet: the first columns
            return padding_mask[:, :num_new]
        return self.inner.new_columns(padding_mask, num_new)

    # --- transformers' Cache API ----------------------------------------------------------------
    @property
    def is_compileable(self) -> bool:
        return True

    # per layer, as transformers asks (it has no layer objects here): full attention everywhere
    @property
    def is_linear(self) -> list[bool]:
        return [False] * self.config.num_applications

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * self.config.num_applications

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_len

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.max_len, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.inner is not None:
            self.inner.reorder_rows(beam_idx)

    def reset(self) -> None:
        self.inner = None

    def _unsupported(self, what: str) -> None:
        raise ValueError(f"{what} is not supported by the static cache; use the default "
                         f"(DepthAttnCache) for this generation mode")

    def crop(self, *args: Any, **kwargs: Any) -> None:
        self._unsupported("crop (assisted or speculative decoding)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._unsupported("batch_repeat_interleave")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._unsupported("batch_select_indices")


def static_padding_mask(attention_mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """A (B, T) padding mask of the tokens so far, padded with zeros to (B, max_len)."""
    return F.pad(attention_mask, (0, max_len - attention_mask.shape[1]))
