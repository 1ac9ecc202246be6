"""Conversion between ModelConfig and ``transformers.Qwen3Config``.

Only what our decoder models is accepted: a Qwen3 feature we would silently drop (attention
bias, sliding windows, scaled RoPE, another activation) is refused with its name and value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Qwen3Config

    from depthattn.config import ModelConfig


def _rope_theta(hf_config: Any) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"Qwen3 rope_parameters.rope_type ({rope_type!r}) is not supported; "
                         f"allowed: 'default' (unscaled RoPE)")
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if theta is None:
        raise ValueError("the Qwen3 config names no rope_theta")
    return float(theta)


def config_fields_from_qwen3(hf_config: Qwen3Config) -> dict[str, Any]:
    """ModelConfig fields (no method) for a Qwen3Config."""
    unsupported = {
        "attention_bias": (getattr(hf_config, "attention_bias", False), False),
        "use_sliding_window": (getattr(hf_config, "use_sliding_window", False), False),
        "hidden_act": (getattr(hf_config, "hidden_act", "silu"), "silu"),
    }
    for name, (value, allowed) in unsupported.items():
        if value != allowed:
            raise ValueError(f"Qwen3 {name} ({value!r}) is not supported; allowed: {allowed!r}")
    return dict(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        num_kv_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
        head_dim=getattr(hf_config, "head_dim", None),
        max_seq_len=hf_config.max_position_embeddings,
        rope_theta=_rope_theta(hf_config),
        rms_norm_eps=hf_config.rms_norm_eps,
        init_std=hf_config.initializer_range,
        tie_embeddings=bool(hf_config.tie_word_embeddings),
    )


def qwen3_config_from_fields(config: ModelConfig) -> Qwen3Config:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        rms_norm_eps=config.rms_norm_eps,
        initializer_range=config.init_std,
        tie_word_embeddings=config.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        use_sliding_window=False,
    )
