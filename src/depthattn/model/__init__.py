"""The pure-PyTorch Qwen3-style decoder: config, norm, rope, mlp, attention, block, decoder,
looped schedule, caches and generation, one file each."""

from __future__ import annotations

from typing import Any

__all__ = ["CausalLM", "Decoder", "KVCache"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `depthattn.model.config` (which the methods read) loads without the decoder
    # (which builds the methods).
    if name == "KVCache":
        from depthattn.model.cache import KVCache
        return KVCache
    if name in ("CausalLM", "Decoder"):
        from depthattn.model import decoder
        return getattr(decoder, name)
    raise AttributeError(f"module 'depthattn.model' has no attribute {name!r}")
