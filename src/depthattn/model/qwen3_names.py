"""The one mapping between ModelConfig fields and Hugging Face's Qwen3/Llama config names.

Used by ``ModelConfig.from_qwen3`` / ``to_qwen3``, by the Hugging Face config's aliases
(``DepthAttnConfig.attribute_map``) and by the converter of the authors' Llama-format
checkpoints. Only what our decoder models is accepted: a Qwen3 feature we would silently drop
(attention bias, sliding windows, scaled RoPE, another activation) is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from depthattn.utils.errors import DepthAttnError

if TYPE_CHECKING:
    from transformers import Qwen3Config

# ModelConfig field -> the Hugging Face config attribute holding the same value. RoPE's theta
# is not here: Hugging Face keeps it inside `rope_parameters` (older configs: `rope_theta`).
HF_NAMES: dict[str, str] = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "max_seq_len": "max_position_embeddings",
    "rms_norm_eps": "rms_norm_eps",
    "init_std": "initializer_range",
    "tie_embeddings": "tie_word_embeddings",
}
REQUIRED_HF_NAMES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads")
# Qwen3 features our decoder does not model, with the only value we accept.
UNSUPPORTED_QWEN3 = {"attention_bias": False, "use_sliding_window": False, "hidden_act": "silu"}


def rope_theta_from_hf(raw: Mapping[str, Any], default: float | None = None) -> float:
    """θ from ``rope_parameters`` (or a top-level ``rope_theta``); unscaled RoPE only."""
    params = raw.get("rope_parameters") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise DepthAttnError(f"rope_parameters.rope_type ({rope_type!r}) is not supported; "
                             f"allowed: 'default' (unscaled RoPE)")
    theta = params.get("rope_theta", raw.get("rope_theta", default))
    if theta is None:
        raise DepthAttnError("the config names no rope_theta")
    return float(theta)


def fields_from_hf(raw: Mapping[str, Any], where: str = "",
                   rope_theta_default: float | None = None) -> dict[str, Any]:
    """ModelConfig fields (geometry only, no method) from a Hugging Face config as a dict.

    Attributes that are absent or None keep ModelConfig's defaults, except the kv heads, which
    default to the query heads (no GQA), as in Hugging Face."""
    missing = [name for name in REQUIRED_HF_NAMES if raw.get(name) is None]
    if missing:
        raise DepthAttnError(f"the config{where} has no {', '.join(map(repr, missing))}")
    fields = {ours: raw[theirs] for ours, theirs in HF_NAMES.items()
              if raw.get(theirs) is not None}
    fields.setdefault("num_kv_heads", fields["num_heads"])
    if "tie_embeddings" in fields:
        fields["tie_embeddings"] = bool(fields["tie_embeddings"])
    fields["rope_theta"] = rope_theta_from_hf(raw, rope_theta_default)
    return fields


def fields_from_qwen3(hf_config: Qwen3Config) -> dict[str, Any]:
    """ModelConfig fields (no method) for a ``transformers.Qwen3Config``."""
    raw = hf_config.to_dict()
    for name, allowed in UNSUPPORTED_QWEN3.items():
        value = raw.get(name, allowed)
        if value != allowed:
            raise DepthAttnError(f"Qwen3 {name} ({value!r}) is not supported; allowed: {allowed!r}")
    try:
        return fields_from_hf(raw, " (Qwen3)")
    except ValueError as error:
        raise DepthAttnError(f"Qwen3 {error}") from None


def qwen3_config_from_fields(fields: Mapping[str, Any]) -> Qwen3Config:
    """The ``transformers.Qwen3Config`` of the geometry in ``fields`` (ModelConfig.to_dict())."""
    from transformers import Qwen3Config

    return Qwen3Config(
        **{theirs: fields[ours] for ours, theirs in HF_NAMES.items()},
        rope_parameters={"rope_type": "default", "rope_theta": fields["rope_theta"]},
        **UNSUPPORTED_QWEN3)
