"""Static KV cache. Layer l stores (k_l, ṽ_l): with Depth-Attention the *mixed* value replaces
the raw one, so the cache has exactly a vanilla GQA decoder's shape, dtype and size
(docs/method.md §4). ``kv_format`` stores keys and values in a smaller format
(``depthattn.ops.kv_quant``); attention then reads them dequantised, the tokens of the current
call included, so what it computes is what a quantised cache gives."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from depthattn.ops.kv_quant import (
    STORAGE_DTYPE,
    check_kv_format,
    quantize_int8,
    to_storage,
)


class DecoderCache(Protocol):
    """What ``Decoder.forward`` needs of a cache: ``KVCache`` here, and the Hugging Face
    ``depthattn.hf.cache.DepthAttnCache`` (a ``transformers.Cache``). A cache with a true
    ``fixed_shape`` attribute (``StaticKVCache``, ``DepthAttnStaticCache``) also has
    ``attention_mask()``: attention then reads every slot, under that mask."""

    length: int  # tokens (slots) cached so far
    batch_size: int

    def past_valid(self) -> torch.Tensor:
        """(B, length) bool: False at the cached padding."""
        ...

    def begin(self, new_valid: torch.Tensor | None, num_new: int,
              batch_size: int) -> tuple[int, torch.Tensor | None, torch.Tensor]:
        """Before the layers run: (past length, key padding mask over past + new or None,
        the new tokens' RoPE positions (B, num_new))."""
        ...

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append one layer's new (k, ṽ); return its keys and values so far."""
        ...

    def end(self, num_new: int) -> None:
        """After every layer has written the new tokens."""
        ...


def new_positions(next_position: torch.Tensor,
                  new_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE positions of new tokens (B, T) given each row's next position (B,) and the new
    tokens' padding mask (B, T) bool: a real token's position counts the real tokens before it
    (padding gets its neighbour's, and is masked anyway). Also returns the real tokens per row."""
    real = new_valid.long().cumsum(-1)  # (B, T) real tokens so far in this call
    return (next_position[:, None] + real - 1).clamp(min=0), real[:, -1]


class KVCache:
    """Pre-allocated per-layer buffers (B, H_kv, max_len, d), filled left to right.

    All rows advance together (prompts are left-padded); ``key_valid`` remembers which written
    slots are padding and ``next_position`` the RoPE position of each row's next real token.
    """

    def __init__(self, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, kv_format: str | None = None) -> None:
        """dtype: what attention computes in; kv_format: how keys and values are stored
        (None: in ``dtype``, exactly; else one of ``depthattn.ops.kv_quant.KV_FORMATS``)."""
        check_kv_format(kv_format)
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.dtype, self.kv_format = dtype, kv_format
        stored = dtype if kv_format is None else STORAGE_DTYPE[kv_format]
        self.keys = [torch.zeros(shape, dtype=stored, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=stored, device=device) for _ in range(num_layers)]
        # int8: one float32 scale per (row, head, token), for keys and for values
        scales = (batch_size, num_kv_heads, max_len, 1)
        n_scaled = num_layers if kv_format == "int8" else 0
        self.key_scales = [torch.ones(scales, device=device) for _ in range(n_scaled)]
        self.value_scales = [torch.ones(scales, device=device) for _ in range(n_scaled)]
        self.key_valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0  # slots written so far
        self.has_padding = False

    @classmethod
    def for_model(cls, model: nn.Module, batch_size: int, max_len: int | None = None,
                  dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                  kv_format: str | None = None) -> KVCache:
        """A cache sized for ``model`` (a ``CausalLM``: its ``config`` and ``lm_head``); dtype
        and device default to the model's. One layer slot per application: L_eff =
        ``config.num_applications`` (num_layers unless the model is looped)."""
        config = model.config
        max_len = config.max_seq_len if max_len is None else max_len
        if not 1 <= max_len <= config.max_seq_len:
            raise ValueError(f"cache max_len ({max_len}) must be between 1 and the model's "
                             f"max_seq_len ({config.max_seq_len})")
        weight = model.lm_head.weight
        return cls(config.num_applications, batch_size, max_len, config.num_kv_heads, config.head_dim,
                   dtype=dtype or weight.dtype, device=device or weight.device,
                   kv_format=kv_format)

    @property
    def nbytes(self) -> int:
        """Bytes of the persistent inference state: the key and value buffers (and the int8
        scales)."""
        buffers = (*self.keys, *self.values, *self.key_scales, *self.value_scales)
        return sum(t.numel() * t.element_size() for t in buffers)

    def past_valid(self) -> torch.Tensor:
        """(B, length) bool: which cached slots hold real tokens (False at padding)."""
        return self.key_valid[:, :self.length]

    def begin(self, new_valid: torch.Tensor | None, num_new: int,
              batch_size: int) -> tuple[int, torch.Tensor | None, torch.Tensor]:
        """Register ``num_new`` incoming tokens before the layers run.

        new_valid: (B, num_new) bool padding mask of the new tokens, or None (all real).
        Returns (past_len, key_valid over past + new or None if nothing is padded,
        position_ids (B, num_new)).
        """
        past = self.length
        if past + num_new > self.max_len:
            raise ValueError(f"the cache holds {past} tokens and {num_new} more do not fit in "
                             f"its max_len ({self.max_len}); build it with a larger max_len")
        if new_valid is None:
            offsets = torch.arange(num_new, device=self.next_position.device)[None, :]
            positions = self.next_position[:, None] + offsets
            self.key_valid[:, past:past + num_new] = True
            self._advance = torch.full_like(self.next_position, num_new)
        else:
            self.has_padding = self.has_padding or not bool(new_valid.all())
            positions, self._advance = new_positions(self.next_position, new_valid)
            self.key_valid[:, past:past + num_new] = new_valid
        return past, self.key_valid[:, :past + num_new] if self.has_padding else None, positions

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' (k, ṽ) of one layer; return the layer's keys and values so far
        (transformers' ``Cache.update`` argument order)."""
        k, v = key_states, value_states
        start, end = self.length, self.length + k.shape[2]
        if self.kv_format is None:
            self.keys[layer_idx][:, :, start:end] = k
            self.values[layer_idx][:, :, start:end] = v
            return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]
        return (self._store(self.keys, self.key_scales, layer_idx, start, k),
                self._store(self.values, self.value_scales, layer_idx, start, v))

    def _store(self, buffers: list[torch.Tensor], scales: list[torch.Tensor], layer_idx: int,
               start: int, x: torch.Tensor) -> torch.Tensor:
        """Write x (B, H_kv, T, d) in the cache's format; read back every slot so far."""
        end = start + x.shape[2]
        if self.kv_format == "int8":
            codes, scale = quantize_int8(x)
            buffers[layer_idx][:, :, start:end] = codes
            scales[layer_idx][:, :, start:end] = scale
            return (buffers[layer_idx][:, :, :end].float()
                    * scales[layer_idx][:, :, :end]).to(self.dtype)
        buffers[layer_idx][:, :, start:end] = to_storage(x, self.kv_format)
        return buffers[layer_idx][:, :, :end].to(self.dtype)

    def end(self, num_new: int) -> None:
        """Commit the ``num_new`` tokens of ``begin`` once every layer has written them."""
        self.length += num_new
        self.next_position = self.next_position + self._advance


# ---------------------------------------------------------------------------------------------
# ``StaticKVCache``: the KV cache with shapes that never change, for compiled decoding.
#
# ``KVCache`` slices its buffers to the tokens written so far, so every decoding step has new
# shapes and reads a Python counter: ``torch.compile`` would recompile (or guard) at each
# position. Here attention reads all ``max_len`` slots, with a mask that hides the unwritten ones
# and padding, and the new tokens are written at a slot index kept on the device. A decode step is
# then one graph at every position, with no host synchronisation, which CUDA graphs can replay
# (``generate(..., compile=True)``). Same values as ``KVCache``: masked slots get zero weight.
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
