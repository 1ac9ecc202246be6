# Copyright 2026 The depthattn authors. Licensed under the Apache License, Version 2.0.
"""``DepthAttnConfig``: a ModelConfig as a Hugging Face ``PretrainedConfig`` (model_type
``depthattn``). Its fields are ModelConfig's, written out with the same defaults (a test keeps
the two equal) and validated by ModelConfig itself; Hugging Face's standard names
(``num_hidden_layers``, ``max_position_embeddings``, ...) are aliases via ``attribute_map``,
from the one name table in ``depthattn.model.qwen3_names``."""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from depthattn.methods import resolve_config
from depthattn.model.config import ModelConfig
from depthattn.model.qwen3_names import HF_NAMES
from depthattn.utils.errors import DepthAttnError

# tie_embeddings keeps a field of its own under Hugging Face's name: both exist in config.json
ALIASES = {theirs: ours for ours, theirs in HF_NAMES.items()
           if theirs != ours and ours != "tie_embeddings"}


MLA_TP_PLAN = {
    "layers.*.self_attn.q_proj": "colwise",
    "layers.*.self_attn.q_b_proj": "colwise",
    "layers.*.self_attn.kv_a_proj_with_mqa": "mla_kv_a_proj",
    "layers.*.self_attn.kv_b_proj": "colwise",
    "layers.*.self_attn.o_proj": "rowwise",
    "layers.*.mlp.gate_proj": "colwise",
    "layers.*.mlp.up_proj": "colwise",
    "layers.*.mlp.down_proj": "rowwise",
}


class DepthAttnConfig(PretrainedConfig):
    """Every ModelConfig field, validated (and method options resolved) by ModelConfig itself."""

    model_type = "depthattn"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = ALIASES
    # Tensor parallelism (``from_pretrained(..., distributed_config=DistributedConfig(tp_plan=
    # "auto"))``), Qwen3's plan: q/k/v split by heads (colwise), o_proj sums the ranks' heads
    # (rowwise), the MLP likewise. Each rank then holds H / tp query and H_kv / tp kv heads,
    # whole GQA groups when tp divides H_kv, so Depth-Attention's mix over a kv head's group and
    # the cross-layer stash stay on the rank. The per-head norms see a rank's heads only: their
    # gradients are summed over the ranks.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.q_norm": "replicated_with_grad_allreduce",
        "layers.*.self_attn.k_norm": "replicated_with_grad_allreduce",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    # Multi-head latent attention models take DeepseekV3's plan instead: queries, kv_b_proj and
    # the MLP split by heads / columns, o_proj and down_proj rowwise; the latent entry is
    # computed whole on every rank (kv_a_proj_with_mqa's rotary key part sums its gradient over
    # the ranks, transformers' "mla_kv_a_proj"), so the cache is the whole latent on each rank.
    # No pipeline plan (Qwen3's base_model_pp_plan): transformers' pipeline stages pass only the
    # hidden states on, and Depth-Attention's later layers read earlier layers' keys and values.

    # ModelConfig's fields and defaults (depthattn.model.config): transformers makes each
    # PretrainedConfig subclass a dataclass of its annotations
    vocab_size: int = 50304
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_layers: int = 24
    num_heads: int = 16
    num_kv_heads: int = 16
    head_dim: int | None = None
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    rope_parameters: dict[str, Any] | None = None
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    rms_norm_eps: float = 1e-6
    init_std: float = 0.02
    tie_embeddings: bool = False
    k_norm_position: str = "before_rope"
    attention: str = "gqa"
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    rope_interleave: bool = True
    prelude_layers: int = 0
    loop_layers: int = 0
    loop_iterations: int = 1
    loop_injection: str = "none"
    method: str = "vanilla"
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    tie_word_embeddings: bool | None = None  # Hugging Face's name; follows tie_embeddings
    # Qwen3's switch: False drops sliding_window (every layer full); None: sliding_window decides
    use_sliding_window: bool | None = None
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        # Hugging Face names given as keywords (num_hidden_layers=...) set our fields first:
        # the method's defaults below depend on them.
        for alias, name in ALIASES.items():
            if alias in kwargs:
                setattr(self, name, kwargs.pop(alias))
        # Hugging Face keeps θ inside rope_parameters (older configs: rope_scaling)
        if self.rope_parameters is None and kwargs.get("rope_scaling"):
            self.rope_parameters = kwargs.pop("rope_scaling")
        if self.rope_parameters and "rope_theta" in self.rope_parameters:
            self.rope_theta = self.rope_parameters["rope_theta"]
        if self.use_sliding_window is False:
            self.sliding_window = None
        elif self.use_sliding_window and self.sliding_window is None:
            raise DepthAttnError("use_sliding_window is True but sliding_window is None; set "
                                 "sliding_window (tokens each sliding layer sees)")
        if self.layer_types is None:  # spelled out, as Qwen3's config does
            kind = "full_attention" if self.sliding_window is None else "sliding_attention"
            self.layer_types = [kind] * self.num_layers
        # ModelConfig validates every field and fills derived values (head_dim, the method's
        # geometry-dependent defaults such as Depth-Attention's stride = L // 2).
        core = resolve_config(self.to_model_config())
        if core.attention == "mla":  # every rule names a module: q_proj or q_b_proj, not both
            absent = "q_b_proj" if core.q_lora_rank is None else "q_proj"
            self.base_model_tp_plan = {k: v for k, v in MLA_TP_PLAN.items()
                                       if not k.endswith(f".{absent}")}
        self.head_dim = core.head_dim
        self.method_options = dict(core.method_options)
        if self.tie_word_embeddings is not None and \
                bool(self.tie_word_embeddings) != bool(self.tie_embeddings):
            raise DepthAttnError(f"tie_word_embeddings ({self.tie_word_embeddings}) contradicts "
                                 f"tie_embeddings ({self.tie_embeddings}); set tie_embeddings")
        self.tie_word_embeddings = self.tie_embeddings
        super().__post_init__(**kwargs)
        self.__dict__["_tie_names_linked"] = True

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("_tie_names_linked", None)  # a state of this object, not a setting
        return out

    def __setattr__(self, name: str, value: Any) -> None:
        """Once built, tie_embeddings and Hugging Face's tie_word_embeddings are one setting:
        setting either sets both (transformers' tests and tools set tie_word_embeddings)."""
        super().__setattr__(name, value)
        if self.__dict__.get("_tie_names_linked") and value is not None and \
                name in ("tie_embeddings", "tie_word_embeddings"):
            other = "tie_word_embeddings" if name == "tie_embeddings" else "tie_embeddings"
            super().__setattr__(other, bool(value))

    # L_eff, the cache's layer count: ModelConfig's own definition, read from the same fields
    num_applications = ModelConfig.num_applications
    latent_values_cached = ModelConfig.latent_values_cached
    kv_cache_shape = ModelConfig.kv_cache_shape

    @property
    def num_hidden_states(self) -> int:
        """How many states output_hidden_states=True returns: the embeddings and one per
        application, L_eff + 1."""
        return self.num_applications + 1

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(**{f.name: getattr(self, f.name)
                              for f in dataclasses.fields(ModelConfig)})

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs: Any) -> PretrainedConfig:
        """``kwargs``: Hugging Face extras such as ``eos_token_id``."""
        return cls(**config.to_dict(), **kwargs)
