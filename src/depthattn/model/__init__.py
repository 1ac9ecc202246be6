"""The pure-PyTorch Qwen3-style decoder."""

from depthattn.model.cache import KVCache
from depthattn.model.transformer import CausalLM, Decoder

__all__ = ["CausalLM", "Decoder", "KVCache"]
