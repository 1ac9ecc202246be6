"""The KV cache of mixed values as transformers' caches (docs/method.md, docs/design.md):
``DepthAttnCache`` is a ``DynamicCache`` (keys and values in its ``DynamicLayer``s) that keeps the
padding in the core's ``PaddingRecord``; ``DepthAttnStaticCache`` is a ``StaticCache`` for
``cache_implementation="static"`` whose storage is a core ``StaticKVCache``. Both have a vanilla
cache's shape: one layer per layer application (L_eff), H_kv heads of d."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import (
    Cache,
    DynamicCache,
    DynamicLayer,
    StaticCache,
    StaticLayer,
)

from depthattn.model.cache import PaddingRecord, StaticKVCache
from depthattn.utils.errors import DepthAttnError


class DepthAttnCache(DynamicCache):
    """A growing cache for ``DepthAttnForCausalLM``: one ``DynamicLayer`` per layer
    application, L_eff of them for a looped model (docs/method.md §7), num_layers otherwise.

    ``DepthAttnCache(config)`` (the model's ``DepthAttnConfig``) or
    ``DepthAttnCache(num_layers=L_eff)``.
    """

    fixed_shape = False
    max_len = None  # it grows

    def __init__(self, config: Any = None, num_layers: int | None = None) -> None:
        if num_layers is None:
            if config is None:
                raise DepthAttnError("DepthAttnCache needs the model's config or num_layers")
            num_layers = config.num_applications
        super().__init__()  # no config: transformers would size it by num_hidden_layers
        self.layers = [DynamicLayer() for _ in range(num_layers)]
        self.record = PaddingRecord()

    # --- what Decoder.forward reads: the record's; update is Cache.update, the layers' ---------
    @property
    def length(self) -> int:
        return self.record.length

    @property
    def batch_size(self) -> int:
        return self.record.batch_size

    def past_valid(self) -> torch.Tensor:
        return self.record.valid

    def new_columns(self, padding_mask: torch.Tensor, num_new: int) -> torch.Tensor:
        return self.record.new_columns(padding_mask, num_new)

    def begin(self, new_valid: torch.Tensor | None, num_new: int, batch_size: int,
              device: torch.device) -> torch.Tensor:
        return self.record.begin(new_valid, num_new, batch_size, device)

    def attention_mask(self, window: int | None = None) -> tuple[torch.Tensor | None, bool]:
        return self.record.attention_mask(window)

    def end(self) -> None:
        self.record.end()
        written = self.layers[-1].get_seq_length()
        if written != self.length:
            raise RuntimeError(f"the cache's layers hold {written} tokens but {self.length} were "
                               f"registered: a forward pass did not write every layer")

    # --- transformers' Cache API: the layers', and the padding record follows -----------------
    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.record.select_rows(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.record.repeat_rows(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.record.select_rows(indices)

    def crop(self, *args: Any, **kwargs: Any) -> None:
        # the argument's meaning differs between transformers versions: follow the layers
        super().crop(*args, **kwargs)
        self.record.crop(self.layers[0].get_seq_length())

    def reset(self) -> None:
        super().reset()
        self.record.reset()


class DepthAttnStaticCache(StaticCache):
    """A core ``StaticKVCache`` (allocated at the first forward, when the batch is known) that
    says it is compileable, so that transformers compiles the forward of the decoding steps.
    A ``StaticCache`` to transformers' checks; its storage and slots are the core cache's, so
    ``StaticCache.__init__`` (which would allocate its own layers) is not run.
    The attention mask transformers tracks grows by a column per step; ``static_padding_mask``
    gives the forward a (B, max_len) one instead, so that every step has the same shapes."""

    fixed_shape = True

    def __init__(self, config: Any, max_len: int, dtype: torch.dtype = torch.float32,
                 num_kv_heads: int | None = None) -> None:
        """config: the core ``ModelConfig`` (layers, kv heads, head dim); dtype: the model's;
        num_kv_heads: the kv heads this process computes, default the config's cache heads
        (1 for MLA's latent entry); under tensor parallelism a rank's share
        (``DepthAttnForCausalLM.kv_heads_per_rank``)."""
        Cache.__init__(self, layers=[])
        self.config, self.max_len, self.dtype = config, max_len, dtype
        self.num_kv_heads = config.kv_cache_shape[0] if num_kv_heads is None else num_kv_heads
        self.inner: StaticKVCache | None = None

    # --- what Decoder.forward reads: the core static cache's ----------------------------------
    @property
    def length(self) -> int:
        return 0 if self.inner is None else self.inner.length

    @property
    def batch_size(self) -> int:
        return -1 if self.inner is None else self.inner.batch_size

    def past_valid(self) -> torch.Tensor:
        return self.inner.past_valid()

    def new_columns(self, padding_mask: torch.Tensor, num_new: int) -> torch.Tensor:
        if self.inner is None:  # nothing written yet: the first columns
            return padding_mask[:, :num_new]
        return self.inner.new_columns(padding_mask, num_new)

    def begin(self, new_valid: torch.Tensor | None, num_new: int, batch_size: int,
              device: torch.device) -> torch.Tensor:
        if self.inner is None:
            _, key_dim, value_dim = self.config.kv_cache_shape
            self.inner = StaticKVCache(self.config.num_applications, batch_size, self.max_len,
                                       self.num_kv_heads, key_dim, dtype=self.dtype,
                                       device=device, value_dim=value_dim)
            self.layers = [self._layer_view(e) for e in range(self.config.num_applications)]
        return self.inner.begin(new_valid, num_new, batch_size, device)

    def _layer_view(self, e: int) -> StaticLayer:
        """Application e's buffers as transformers' ``StaticLayer`` (what its callers read of a
        static cache's layers): the core cache's tensors themselves, written in place."""
        layer = StaticLayer(self.max_len)
        keys, values = self.inner.keys[e], self.inner.values[e]
        layer.keys, layer.values, layer.is_initialized = keys, values, True
        layer.dtype, layer.device = keys.dtype, keys.device
        layer.batch_size, layer.num_heads = keys.shape[:2]
        layer.k_head_dim, layer.v_head_dim = keys.shape[-1], values.shape[-1]
        layer.cumulative_length = self.inner.slot  # the slots written (a device tensor)
        return layer

    def attention_mask(self, window: int | None = None) -> tuple[torch.Tensor, bool]:
        return self.inner.attention_mask(window)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.update(key_states, value_states, layer_idx)

    def end(self) -> None:
        self.inner.end()

    # --- transformers' Cache API --------------------------------------------------------------
    @property
    def is_compileable(self) -> bool:
        return True

    # per layer, as transformers asks (it has no layer objects here): every layer keeps every
    # slot (a sliding-window layer masks the older ones), as full attention does
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
            self.inner.select_rows(beam_idx)

    def reset(self) -> None:
        self.inner, self.layers = None, []

    def _unsupported(self, what: str) -> None:
        raise DepthAttnError(f"{what} is not supported by the static cache; use the default "
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
