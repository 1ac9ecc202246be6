"""``DepthAttnCache``: the KV cache of mixed values as a ``transformers.Cache``.

Layer l holds (k_l, ṽ_l) in one ``DynamicLayer`` (with Depth-Attention ṽ_l is the mixed value,
so the cache has a vanilla decoder's shape). transformers' ``generate`` creates, grows, reorders
(beam search), repeats, selects and crops it through the ``Cache`` API; beside the layers it
keeps what ``Decoder.forward`` needs of a cache (``depthattn.model.cache.DecoderCache``): which
cached slots are padding, from which each row's next RoPE position follows.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from depthattn.model.cache import new_positions


class DepthAttnCache(Cache):
    """A growing cache for ``DepthAttnForCausalLM``: one ``DynamicLayer`` per layer
    application, L_eff of them for a looped model (docs/method.md §7), num_layers otherwise.

    ``DepthAttnCache(config)`` (the model's ``DepthAttnConfig``) or
    ``DepthAttnCache(num_layers=L_eff)``.
    """

    def __init__(self, config: Any = None, num_layers: int | None = None) -> None:
        if num_layers is None:
            if config is None:
                raise ValueError("DepthAttnCache needs the model's config or num_layers")
            num_layers = config.num_applications
        super().__init__(layers=[DynamicLayer() for _ in range(num_layers)])
        self._valid: torch.Tensor | None = None  # (B, length) bool, False at padding
        self.has_padding = False

    # --- what Decoder.forward uses ------------------------------------------------------------
    @property
    def length(self) -> int:
        return 0 if self._valid is None else self._valid.shape[1]

    @property
    def batch_size(self) -> int:
        """Rows cached; -1 before the first forward (transformers' convention)."""
        return -1 if self._valid is None else self._valid.shape[0]

    def past_valid(self) -> torch.Tensor:
        return self._valid

    def begin(self, new_valid: torch.Tensor | None, num_new: int,
              batch_size: int) -> tuple[int, torch.Tensor | None, torch.Tensor]:
        past = self.length
        if new_valid is None:
            device = self._valid.device if self._valid is not None else None
            new_valid = torch.ones(batch_size, num_new, dtype=torch.bool, device=device)
        else:
            self.has_padding = self.has_padding or not bool(new_valid.all())
        next_position = (torch.zeros(batch_size, dtype=torch.long, device=new_valid.device)
                         if self._valid is None else self._valid.sum(-1))
        positions, _ = new_positions(next_position, new_valid)
        self._valid = new_valid if self._valid is None else torch.cat([self._valid, new_valid], 1)
        return past, self._valid if self.has_padding else None, positions

    def end(self, num_new: int) -> None:
        written = self.layers[-1].get_seq_length()
        if written != self.length:
            raise RuntimeError(f"the cache's layers hold {written} tokens but {self.length} were "
                               f"registered: a forward pass did not write every layer")

    # --- transformers' Cache API: the padding record follows the layers -----------------------
    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self._valid is not None:
            self._valid = self._valid.index_select(0, beam_idx.to(self._valid.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self._valid is not None:
            self._valid = self._valid.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self._valid is not None:
            self._valid = self._valid[indices]

    def crop(self, *args: Any, **kwargs: Any) -> None:
        # the argument's meaning differs between transformers versions: follow the layers
        super().crop(*args, **kwargs)
        if self._valid is not None:
            self._valid = self._valid[:, :self.layers[0].get_seq_length()]
            self.has_padding = not bool(self._valid.all())

    def reset(self) -> None:
        super().reset()
        self._valid, self.has_padding = None, False
