"""KV caches. Layer l stores (k_l, ṽ_l): with Depth-Attention the *mixed* value replaces the raw
one, so a cache has exactly a vanilla GQA decoder's shape, dtype and size (docs/method.md §4).

- ``DecoderCache``: everything ``Decoder.forward`` reads of a cache.
- ``PaddingRecord``: which cached tokens are padding, and so each row's next RoPE position, for
  a cache that fills left to right: ``KVCache`` and the Hugging Face ``DepthAttnCache`` keep
  one each and differ only in where keys and values live.
- ``KVCache``: buffers allocated once for ``max_len`` tokens; attention reads the written ones.
- ``StaticKVCache``: the same buffers, read whole under a mask: shapes that never change, for
  compiled decoding.

``kv_format`` stores keys and values in a smaller format (``depthattn.ops.kv_quant``); attention
then reads them dequantised, the tokens of the current call included, so what it computes is what
a quantised cache gives.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from depthattn.model.attention import attention_mask_for, visible_slots
from depthattn.ops.kv_quant import (
    STORAGE_DTYPE,
    check_kv_format,
    dequantize_int8,
    quantize_int8,
    to_storage,
)
from depthattn.utils.errors import DepthAttnError


@runtime_checkable
class DecoderCache(Protocol):
    """What ``Decoder.forward`` reads of a cache: ``KVCache``, ``StaticKVCache`` and their Hugging
    Face adapters ``depthattn.hf.cache.DepthAttnCache`` and ``DepthAttnStaticCache``. A forward
    call runs ``begin``, then ``update`` once per layer application, then ``end``."""

    # False: attention reads the slots written so far. True: it reads all max_len slots under
    # attention_mask(), and a padding mask may span every slot (as generate passes it).
    fixed_shape: bool
    max_len: int | None  # slots the cache holds; None: it grows
    length: int  # tokens (slots) cached so far
    batch_size: int  # rows; -1 while unknown (a Hugging Face cache before its first call)

    def past_valid(self) -> torch.Tensor:
        """(B, length) bool: False at the cached padding."""
        ...

    def new_columns(self, padding_mask: torch.Tensor, num_new: int) -> torch.Tensor:
        """The (B, num_new) columns of the incoming tokens in a padding mask over the new tokens,
        the past and new ones, or (``fixed_shape``) every slot."""
        ...

    def begin(self, new_valid: torch.Tensor | None, num_new: int, batch_size: int,
              device: torch.device) -> torch.Tensor:
        """Before the layers run: register ``num_new`` incoming tokens (``new_valid`` (B, num_new)
        bool, False at padding, or None: all real) on ``device``; return their RoPE positions
        (B, num_new)."""
        ...

    def attention_mask(self, window: int | None = None) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) for SDPA: the tokens of ``begin`` over the keys ``update``
        returns; with ``window``, a sliding-window layer's (each token sees its last
        ``window`` slots)."""
        ...

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's new (k, ṽ); return the keys and values attention reads."""
        ...

    def end(self) -> None:
        """Commit the tokens of ``begin`` once every layer has written them."""
        ...


def new_positions(next_position: torch.Tensor,
                  new_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE positions of new tokens (B, T) given each row's next position (B,) and the new
    tokens' padding mask (B, T) bool: a real token's position counts the real tokens before it
    (padding gets its neighbour's, and is masked anyway). Also returns the real tokens per row."""
    real = new_valid.long().cumsum(-1)  # (B, T) real tokens so far in this call
    return (next_position[:, None] + real - 1).clamp(min=0), real[:, -1]


class PaddingRecord:
    """Which tokens of a cache that fills left to right are real (False at padding).

    All rows advance together (prompts are left-padded), so a row's next RoPE position is the
    number of its real tokens so far (docs/method.md §4). ``begin`` stages a call's tokens and
    ``end`` commits them; the row operations follow what beam search and assisted decoding do to
    the keys and values.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.valid: torch.Tensor | None = None  # (B, length) bool; None before the first call
        self.has_padding = False  # once padding is cached, every later call needs a mask
        self._staged: torch.Tensor | None = None  # (B, length + T): valid with the call's tokens
        self._mask: tuple[torch.Tensor | None, bool] = (None, True)
        self._call: tuple = ()  # attention_mask_for's arguments for the call in progress

    @property
    def length(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    @property
    def batch_size(self) -> int:
        """Rows recorded; -1 before the first call (transformers' convention)."""
        return -1 if self.valid is None else self.valid.shape[0]

    def new_columns(self, padding_mask: torch.Tensor, num_new: int) -> torch.Tensor:
        return padding_mask[:, -num_new:]

    def begin(self, new_valid: torch.Tensor | None, num_new: int, batch_size: int,
              device: torch.device) -> torch.Tensor:
        past = self.length
        if new_valid is None:
            new_valid = torch.ones(batch_size, num_new, dtype=torch.bool, device=device)
        else:
            self.has_padding = self.has_padding or not bool(new_valid.all())
        next_position = (torch.zeros(batch_size, dtype=torch.long, device=new_valid.device)
                         if self.valid is None else self.valid.sum(-1))
        positions, _ = new_positions(next_position, new_valid)
        self._staged = new_valid if self.valid is None else torch.cat([self.valid, new_valid], 1)
        self._call = (num_new, past, self._staged if self.has_padding else None, device)
        self._mask = attention_mask_for(*self._call)
        return positions

    def attention_mask(self, window: int | None = None) -> tuple[torch.Tensor | None, bool]:
        return self._mask if window is None else attention_mask_for(*self._call, window)

    def end(self) -> None:
        self.valid, self._staged = self._staged, None

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep rows ``index``, in its order (beam search repeats some)."""
        if self.valid is not None:
            self.valid = self.valid[torch.as_tensor(index, device=self.valid.device)]

    def repeat_rows(self, repeats: int) -> None:
        """Each row ``repeats`` times in a row."""
        if self.valid is not None:
            self.valid = self.valid.repeat_interleave(repeats, dim=0)

    def crop(self, length: int) -> None:
        """Keep the first ``length`` tokens."""
        if self.valid is not None:
            self.valid = self.valid[:, :length]
            self.has_padding = not bool(self.valid.all())


class _Buffers:
    """Per-layer key and value buffers (B, H_kv, max_len, d), allocated once; one layer slot per
    application: L_eff = ``config.num_applications`` (num_layers unless the model is looped).
    ``value_dim`` (default ``head_dim``) sets the values' width apart: an MLA cache keeps one
    latent entry per token as its key, (B, 1, max_len, d_c + d_rope), and values of width 0
    (or d_c under Depth-Attention's ``values`` rule; ``ModelConfig.kv_cache_shape``).
    Subclasses say which slots the incoming tokens take, and which slots attention reads
    (``_write``)."""

    def __init__(self, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, kv_format: str | None = None,
                 value_dim: int | None = None) -> None:
        check_kv_format(kv_format)
        value_dim = head_dim if value_dim is None else value_dim
        if kv_format is not None and value_dim != head_dim:
            raise DepthAttnError(f"kv_format {kv_format!r} stores keys and values of one width; "
                                 f"this cache's are {head_dim} and {value_dim} wide (an MLA "
                                 f"cache); use kv_format None")
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.dtype, self.kv_format = dtype, kv_format
        stored = dtype if kv_format is None else STORAGE_DTYPE[kv_format]
        self.keys = [torch.zeros(shape, dtype=stored, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape[:-1] + (value_dim,), dtype=stored, device=device)
                       for _ in range(num_layers)]
        # int8: one float32 scale per (row, head, token), for keys and for values
        scales = (batch_size, num_kv_heads, max_len, 1)
        n_scaled = num_layers if kv_format == "int8" else 0
        self.key_scales = [torch.ones(scales, device=device) for _ in range(n_scaled)]
        self.value_scales = [torch.ones(scales, device=device) for _ in range(n_scaled)]
        self.batch_size, self.max_len = batch_size, max_len

    @classmethod
    def for_model(cls, model: nn.Module, batch_size: int, max_len: int | None = None,
                  dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                  kv_format: str | None = None) -> _Buffers:
        """A cache sized for ``model`` (a ``CausalLM``: its ``config`` and ``lm_head``); dtype
        and device default to the model's, max_len to its ``max_seq_len``."""
        config = model.config
        max_len = config.max_seq_len if max_len is None else max_len
        if not 1 <= max_len <= config.max_seq_len:
            raise DepthAttnError(f"cache max_len ({max_len}) must be between 1 and the model's "
                                 f"max_seq_len ({config.max_seq_len})")
        weight = model.lm_head.weight
        heads, key_dim, value_dim = config.kv_cache_shape
        return cls(config.num_applications, batch_size, max_len, heads, key_dim,
                   dtype=dtype or weight.dtype, device=device or weight.device,
                   kv_format=kv_format, value_dim=value_dim)

    @property
    def nbytes(self) -> int:
        """Bytes of the persistent inference state: the key and value buffers (and the int8
        scales)."""
        buffers = (*self.keys, *self.values, *self.key_scales, *self.value_scales)
        return sum(t.numel() * t.element_size() for t in buffers)

    def _check_fits(self, num_new: int) -> None:
        if self.length + num_new > self.max_len:
            raise DepthAttnError(f"the cache holds {self.length} tokens and {num_new} more do not "
                                 f"fit in its max_len ({self.max_len}); build it with a larger "
                                 f"max_len")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' (k, ṽ) of one layer; return the layer's keys and values that
        attention reads (transformers' ``Cache.update`` argument order)."""
        return (self._store(self.keys, self.key_scales, layer_idx, key_states),
                self._store(self.values, self.value_scales, layer_idx, value_states))

    def _store(self, buffers: list[torch.Tensor], scales: list[torch.Tensor], layer_idx: int,
               x: torch.Tensor) -> torch.Tensor:
        """Write x (B, H_kv, T, d) in the cache's format; read back what attention reads,
        dequantised."""
        if self.kv_format == "int8":
            codes, scale = quantize_int8(x)
            return dequantize_int8(self._write(buffers[layer_idx], codes),
                                   self._write(scales[layer_idx], scale), self.dtype)
        stored = x if self.kv_format is None else to_storage(x, self.kv_format)
        return self._write(buffers[layer_idx], stored).to(self.dtype)

    def _write(self, buffer: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Write x (B, H_kv, T, ·) at the incoming tokens' slots of ``buffer``; return the
        slots attention reads."""
        raise NotImplementedError


class KVCache(_Buffers):
    """Buffers (B, H_kv, max_len, d) filled left to right; attention reads the slots written so
    far. A ``PaddingRecord`` remembers which of them are padding."""

    fixed_shape = False

    def __init__(self, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, kv_format: str | None = None,
                 value_dim: int | None = None) -> None:
        """dtype: what attention computes in; kv_format: how keys and values are stored
        (None: in ``dtype``, exactly; else one of ``depthattn.ops.kv_quant.KV_FORMATS``)."""
        super().__init__(num_layers, batch_size, max_len, num_kv_heads, head_dim, dtype, device,
                         kv_format, value_dim)
        self.record = PaddingRecord()

    @property
    def length(self) -> int:
        return self.record.length

    def past_valid(self) -> torch.Tensor:
        return self.record.valid

    def new_columns(self, padding_mask: torch.Tensor, num_new: int) -> torch.Tensor:
        return self.record.new_columns(padding_mask, num_new)

    def begin(self, new_valid: torch.Tensor | None, num_new: int, batch_size: int,
              device: torch.device) -> torch.Tensor:
        self._check_fits(num_new)
        return self.record.begin(new_valid, num_new, batch_size, device)

    def attention_mask(self, window: int | None = None) -> tuple[torch.Tensor | None, bool]:
        return self.record.attention_mask(window)

    def _write(self, buffer: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        end = self.length + x.shape[2]
        buffer[:, :, self.length:end] = x
        return buffer[:, :, :end]

    def end(self) -> None:
        self.record.end()


# ``KVCache`` slices its buffers to the tokens written so far, so every decoding step has new
# shapes and reads a Python counter: ``torch.compile`` would recompile (or guard) at each
# position. Here attention reads all ``max_len`` slots, with a mask that hides the unwritten ones
# and padding, and the new tokens are written at a slot index kept on the device. A decode step is
# then one graph at every position, with no host synchronisation, which CUDA graphs can replay
# (``generate(..., compile=True)``). Same values as ``KVCache``: masked slots get zero weight.
class StaticKVCache(_Buffers):
    """``KVCache``'s buffers and ``for_model``, with shapes that never change. ``slot`` (a 0-d
    device tensor) counts the slots written; ``length`` reads it back (a synchronisation: for
    checks outside the compiled step, never inside it)."""

    fixed_shape = True

    def __init__(self, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, kv_format: str | None = None,
                 value_dim: int | None = None) -> None:
        super().__init__(num_layers, batch_size, max_len, num_kv_heads, head_dim, dtype, device,
                         kv_format, value_dim)
        self.slot = torch.zeros((), dtype=torch.long, device=device)
        # False at padding and at the unwritten slots, which attention must not see
        self.key_valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._new_slots = self.slot[None]  # (T,) the slots of the call in progress
        if self.slot.device.type == "cuda":  # CUDA graphs may keep these addresses
            for t in (*self.keys, *self.values, *self.key_scales, *self.value_scales,
                      self.key_valid, self.next_position, self.slot):
                torch._dynamo.mark_static_address(t)

    @property
    def length(self) -> int:
        return int(self.slot)

    def past_valid(self) -> torch.Tensor:
        return self.key_valid[:, :self.length]

    def new_columns(self, padding_mask: torch.Tensor, num_new: int) -> torch.Tensor:
        """A mask over every slot is read at the device-side slot index (no synchronisation)."""
        if padding_mask.shape[1] != self.max_len:
            return padding_mask[:, -num_new:]
        return padding_mask.index_select(1, self.slot + torch.arange(num_new,
                                                                    device=self.slot.device))

    def begin(self, new_valid: torch.Tensor | None, num_new: int, batch_size: int,
              device: torch.device) -> torch.Tensor:
        """Reads nothing back to the host while compiled. The tokens' slots, padding and positions
        are written now; ``end`` moves the slot index past them."""
        if not torch.compiler.is_compiling():
            self._check_fits(num_new)
        self._new_slots = self.slot + torch.arange(num_new, device=self.slot.device)  # (T,)
        if new_valid is None:
            new_valid = torch.ones(batch_size, num_new, dtype=torch.bool, device=self.slot.device)
        positions, advance = new_positions(self.next_position, new_valid)
        self.key_valid.index_copy_(1, self._new_slots, new_valid)
        self.next_position.add_(advance)
        return positions

    def attention_mask(self, window: int | None = None) -> tuple[torch.Tensor, bool]:
        """(B, 1, T, max_len) bool: causal over slots (within ``window``), padding and unwritten
        slots hidden. A padding query that sees nothing sees everything instead, so SDPA stays
        finite (its output is never read by a real token)."""
        causal = visible_slots(self._new_slots, self.max_len, window)  # (T, max_len)
        mask = causal[None, None] & self.key_valid[:, None, None, :]
        return mask | ~mask.any(dim=-1, keepdim=True), False

    def _write(self, buffer: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        buffer.index_copy_(2, self._new_slots, x.to(buffer.dtype))
        return buffer

    def end(self) -> None:
        self.slot.add_(self._new_slots.shape[0])

    def select_rows(self, index: torch.Tensor) -> None:
        """Rows ``index`` (beam search), in place: the buffers keep their addresses, which
        CUDA graphs replay."""
        for t in (*self.keys, *self.values, *self.key_scales, *self.value_scales,
                  self.key_valid, self.next_position):
            t.copy_(t.index_select(0, index.to(t.device)))
