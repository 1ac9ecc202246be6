"""``StaticKVCache``: the KV cache with shapes that never change, for compiled decoding.

``KVCache`` slices its buffers to the tokens written so far, so every decoding step has new
shapes and reads a Python counter: ``torch.compile`` would recompile (or guard) at each
position. Here attention reads all ``max_len`` slots, with a mask that hides the unwritten ones
and padding, and the new tokens are written at a slot index kept on the device. A decode step is
then one graph at every position, with no host synchronisation, which CUDA graphs can replay
(``generate(..., compile=True)``). Same values as ``KVCache``: masked slots get zero weight.
"""

from __future__ import annotations

import torch

from depthattn.model.cache import KVCache, new_positions
from depthattn.ops.kv_quant import quantize_int8, to_storage


class StaticKVCache(KVCache):
    """``KVCache``'s constructor and ``for_model``; ``slot`` (a 0-d device tensor) counts the
    slots written. ``length`` reads it back (a synchronisation: for checks outside the compiled
    step, never inside it)."""

    fixed_shape = True  # Decoder.forward: attention over every slot, masked

    def __init__(self, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, kv_format: str | None = None) -> None:
        self.slot = torch.zeros((), dtype=torch.long, device=device)
        super().__init__(num_layers, batch_size, max_len, num_kv_heads, head_dim, dtype,
                         device, kv_format)
        self.key_valid.fill_(False)  # unwritten slots are hidden from attention
        self._slot_range = torch.arange(max_len, device=device)
        self._new_slots = self.slot[None]
        if self.slot.device.type == "cuda":  # CUDA graphs may keep these addresses
            for t in (*self.keys, *self.values, *self.key_scales, *self.value_scales,
                      self.key_valid, self.next_position, self.slot):
                torch._dynamo.mark_static_address(t)

    @property
    def length(self) -> int:
        return int(self.slot)

    @length.setter
    def length(self, value: int) -> None:
        self.slot.fill_(value)

    def begin(self, new_valid: torch.Tensor | None, num_new: int,
              batch_size: int) -> tuple[int | None, torch.Tensor, torch.Tensor]:
        """As ``KVCache.begin``, without reading anything back to the host while compiled;
        the past length is not known on the host (None): use ``attention_mask``."""
        if not torch.compiler.is_compiling() and self.length + num_new > self.max_len:
            raise ValueError(f"the cache holds {self.length} tokens and {num_new} more do not "
                             f"fit in its max_len ({self.max_len}); build it with a larger "
                             f"max_len")
        device = self.slot.device
        self._new_slots = self.slot + torch.arange(num_new, device=device)  # (T,)
        if new_valid is None:
            new_valid = torch.ones(batch_size, num_new, dtype=torch.bool, device=device)
        positions, advance = new_positions(self.next_position, new_valid)
        self.key_valid.index_copy_(1, self._new_slots, new_valid)
        self.next_position.add_(advance)
        return None, self.key_valid, positions

    def new_columns(self, padding_mask: torch.Tensor, num_new: int) -> torch.Tensor:
        """The (B, num_new) columns of a (B, max_len) padding mask over every slot that belong
        to the incoming tokens (read at the device-side slot index: no synchronisation)."""
        return padding_mask.index_select(1, self.slot + torch.arange(num_new,
                                                                    device=self.slot.device))

    def reorder_rows(self, index: torch.Tensor) -> None:
        """Rows ``index`` (beam search), in place: the buffers keep their addresses, which
        CUDA graphs replay."""
        for t in (*self.keys, *self.values, *self.key_scales, *self.value_scales,
                  self.key_valid, self.next_position):
            t.copy_(t.index_select(0, index.to(t.device)))

    def attention_mask(self) -> torch.Tensor:
        """(B, 1, T, max_len) bool for the tokens of ``begin``: causal over slots, padding and
        unwritten slots hidden. A padding query that sees nothing sees everything instead, so
        SDPA stays finite (its output is never read by a real token)."""
        causal = self._slot_range[None, :] <= self._new_slots[:, None]  # (T, max_len)
        mask = causal[None, None] & self.key_valid[:, None, None, :]
        return mask | ~mask.any(dim=-1, keepdim=True)

    def _store(self, buffers: list[torch.Tensor], scales: list[torch.Tensor], layer_idx: int,
               start: int, x: torch.Tensor) -> torch.Tensor:
        """Write x (B, H_kv, T, d) at the new slots; read back every slot (dequantised)."""
        slots = self._new_slots
        if self.kv_format == "int8":
            codes, scale = quantize_int8(x)
            buffers[layer_idx].index_copy_(2, slots, codes)
            scales[layer_idx].index_copy_(2, slots, scale)
            return (buffers[layer_idx].float() * scales[layer_idx]).to(self.dtype)
        stored = x if self.kv_format is None else to_storage(x, self.kv_format)
        buffers[layer_idx].index_copy_(2, slots, stored.to(buffers[layer_idx].dtype))
        return buffers[layer_idx].to(self.dtype)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self._store(self.keys, self.key_scales, layer_idx, 0, key_states),
                self._store(self.values, self.value_scales, layer_idx, 0, value_states))

    def end(self, num_new: int) -> None:
        self.slot.add_(num_new)
