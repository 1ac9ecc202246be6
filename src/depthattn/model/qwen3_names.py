"""The one mapping between ModelConfig fields and Hugging Face's Qwen3/Llama config names.

Used by ``ModelConfig.from_qwen3`` / ``to_qwen3``, by the Hugging Face config's aliases
(``DepthAttnConfig.attribute_map``) and by the converter of the authors' Llama-format
checkpoints. Only what our decoder models is accepted: a Qwen3 feature we would silently drop
(attention bias, another activation, a RoPE type we do not compute) is refused by name.
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
UNSUPPORTED_QWEN3 = {"attention_bias": False, "hidden_act": "silu"}
# RoPE types of Hugging Face's `rope_parameters` we compute: default is ours, the scaled ones
# come from transformers' ROPE_INIT_FUNCTIONS (depthattn.model.rope)
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def rope_type(rope_parameters: Mapping[str, Any] | None) -> str:
    params = rope_parameters or {}
    return params.get("rope_type", params.get("type", "default"))


def check_rope_parameters(rope_parameters: Mapping[str, Any] | None, rope_theta: float,
                          head_dim: int, max_seq_len: int) -> None:
    """Refuse, by name, RoPE settings we would compute wrongly or not at all: another type, a
    partial rotary factor, a θ that contradicts ``rope_theta``, a missing key of the type, and
    a value transformers' own validation finds malformed ("... must be ..."). Its other
    warnings (keys the type does not read, a factor that disagrees with the context lengths,
    where it uses the factor) stay warnings, as for Qwen3."""
    if rope_parameters is None:
        return
    if not isinstance(rope_parameters, Mapping):
        raise DepthAttnError(f"rope_parameters ({rope_parameters!r}) must be a mapping such as "
                             f"{{'rope_type': 'yarn', 'factor': 4.0, ...}}, or None")
    kind = rope_type(rope_parameters)
    if kind not in ROPE_TYPES:
        raise DepthAttnError(f"rope_parameters.rope_type ({kind!r}) is not supported; allowed: "
                             f"{', '.join(ROPE_TYPES)}")
    theta = rope_parameters.get("rope_theta", rope_theta)
    if theta != rope_theta:
        raise DepthAttnError(f"rope_parameters.rope_theta ({theta}) contradicts rope_theta "
                             f"({rope_theta}); set one value")
    partial = rope_parameters.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise DepthAttnError(f"rope_parameters.partial_rotary_factor ({partial}) is not "
                             f"supported; allowed: 1.0 (every dimension rotates)")
    if kind == "default":
        return
    import logging

    class Refuse(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if " must be " in record.getMessage() or "Missing" in record.getMessage():
                raise DepthAttnError(f"rope_parameters: {record.getMessage()}")

    config = rope_config(head_dim, rope_theta, {}, max_seq_len)
    logger = logging.getLogger("transformers.modeling_rope_utils")
    handler = Refuse(logging.WARNING)
    logger.addHandler(handler)
    try:
        config.rope_parameters = {**rope_parameters, "rope_theta": rope_theta}
        config.standardize_rope_params()
        config.validate_rope()
    except KeyError as error:  # a required key is missing
        raise DepthAttnError(f"rope_parameters: {error.args[0]}") from None
    finally:
        logger.removeHandler(handler)


def canonical_rope_parameters(rope_parameters: Mapping[str, Any] | None
                              ) -> dict[str, Any] | None:
    """A checked ``rope_parameters`` as ModelConfig keeps it: None when unscaled, else without
    θ (kept in rope_theta) and with ``rope_type`` under its current name."""
    if rope_type(rope_parameters) == "default":
        return None
    params = {k: v for k, v in rope_parameters.items() if k not in ("rope_theta", "type")}
    params["rope_type"] = rope_type(rope_parameters)
    return params


def rope_config(head_dim: int, rope_theta: float, rope_parameters: Mapping[str, Any] | None,
                max_seq_len: int) -> Qwen3Config:
    """A Hugging Face config carrying just what transformers' RoPE functions read."""
    from transformers import Qwen3Config

    return Qwen3Config(head_dim=head_dim, hidden_size=head_dim, num_attention_heads=1,
                       num_key_value_heads=1, num_hidden_layers=1,
                       max_position_embeddings=max_seq_len,
                       rope_parameters={**(rope_parameters or {}), "rope_theta": rope_theta})


def rope_from_hf(raw: Mapping[str, Any], default: float | None = None
                 ) -> tuple[float, dict[str, Any] | None]:
    """θ and the scaling (``rope_parameters`` without θ; None when unscaled) from a Hugging Face
    config: ``rope_parameters``, or the older ``rope_scaling`` and top-level ``rope_theta``."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = params.pop("rope_theta", raw.get("rope_theta", default))
    if theta is None:
        raise DepthAttnError("the config names no rope_theta")
    if "type" in params:  # the older name
        params.setdefault("rope_type", params.pop("type"))
    kind = params.get("rope_type", "default")
    if kind not in ROPE_TYPES:
        raise DepthAttnError(f"rope_parameters.rope_type ({kind!r}) is not supported; allowed: "
                             f"{', '.join(ROPE_TYPES)}")
    return float(theta), (params if kind != "default" else None)


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
    fields["rope_theta"], fields["rope_parameters"] = rope_from_hf(raw, rope_theta_default)
    # Qwen3 keeps a window only when use_sliding_window; its layer_types say where it applies
    if raw.get("sliding_window") is not None and raw.get("use_sliding_window", True):
        fields["sliding_window"] = raw["sliding_window"]
        fields["layer_types"] = raw.get("layer_types")
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

    if fields.get("attention", "gqa") != "gqa":
        raise DepthAttnError(f"attention ({fields['attention']!r}) has no Qwen3Config: Qwen3 is "
                             f"grouped-query attention; an 'mla' model converts to DeepseekV3")
    return Qwen3Config(
        **{theirs: fields[ours] for ours, theirs in HF_NAMES.items()},
        rope_parameters={"rope_type": "default", **(fields.get("rope_parameters") or {}),
                         "rope_theta": fields["rope_theta"]},
        use_sliding_window=fields.get("sliding_window") is not None,
        sliding_window=fields.get("sliding_window"),
        # spelled out: Qwen3 would otherwise derive it from its max_window_layers
        layer_types=fields.get("layer_types") or (
            None if fields.get("sliding_window") is None
            else ["sliding_attention"] * fields["num_layers"]),
        **UNSUPPORTED_QWEN3)
