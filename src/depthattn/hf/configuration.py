"""``DepthAttnConfig``: a ModelConfig as a Hugging Face ``PretrainedConfig`` (model_type
``depthattn``). Field names are ModelConfig's; Hugging Face's standard names
(``num_hidden_layers``, ``max_position_embeddings``, ...) are aliases via ``attribute_map``."""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from depthattn.config import ModelConfig

_DEFAULTS = ModelConfig()


class DepthAttnConfig(PretrainedConfig):
    """Every ModelConfig field, validated (and method options resolved) by ModelConfig itself."""

    model_type = "depthattn"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "num_key_value_heads": "num_kv_heads",
        "max_position_embeddings": "max_seq_len",
        "initializer_range": "init_std",
    }

    vocab_size: int = _DEFAULTS.vocab_size
    hidden_size: int = _DEFAULTS.hidden_size
    intermediate_size: int = _DEFAULTS.intermediate_size
    num_layers: int = _DEFAULTS.num_layers
    num_heads: int = _DEFAULTS.num_heads
    num_kv_heads: int = _DEFAULTS.num_kv_heads
    head_dim: int | None = None
    max_seq_len: int = _DEFAULTS.max_seq_len
    rope_theta: float = _DEFAULTS.rope_theta
    rms_norm_eps: float = _DEFAULTS.rms_norm_eps
    init_std: float = _DEFAULTS.init_std
    tie_embeddings: bool = _DEFAULTS.tie_embeddings
    k_norm_position: str = _DEFAULTS.k_norm_position
    method: str = _DEFAULTS.method
    method_options: dict | None = None
    tie_word_embeddings: bool | None = None  # Hugging Face's name; follows tie_embeddings
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        # ModelConfig validates every field and fills derived values (head_dim, the method's
        # geometry-dependent defaults such as Depth-Attention's stride = L // 2).
        core = ModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)})
        self.head_dim = core.head_dim
        self.method_options = dict(core.method_options)
        if self.tie_word_embeddings is not None and \
                bool(self.tie_word_embeddings) != bool(self.tie_embeddings):
            raise ValueError(f"tie_word_embeddings ({self.tie_word_embeddings}) contradicts "
                             f"tie_embeddings ({self.tie_embeddings}); set tie_embeddings")
        self.tie_word_embeddings = self.tie_embeddings
        super().__post_init__(**kwargs)

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)})

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs: Any) -> DepthAttnConfig:
        """``kwargs``: Hugging Face extras such as ``eos_token_id``."""
        return cls(**config.to_dict(), **kwargs)
