"""The one mapping between ModelConfig fields and transformers' ``DeepseekV3Config``.

Used by ``ModelConfig.from_deepseek_v3`` / ``to_deepseek_v3``, by ``depthattn.io`` (a
DeepseekV3 folder is a model folder) and by ``depthattn convert --from-deepseek-v3``. Our MLA
(docs/method.md §9) is the attention of transformers' ``DeepseekV3Attention`` with a dense
SwiGLU MLP in every layer and unscaled RoPE. A DeepseekV3 feature we would silently drop or
compute differently (mixture-of-experts layers, attention biases, yarn's attention scale,
grouped kv heads, quantized weights) is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from depthattn.model.qwen3_names import HF_NAMES
from depthattn.utils.errors import DepthAttnError

if TYPE_CHECKING:
    from transformers import DeepseekV3Config

# ModelConfig field -> the DeepseekV3Config attribute holding the same value. head_dim is not
# here: DeepseekV3 derives it (its ``head_dim`` is d_rope, the rotary width; ours is
# d_nope + d_rope, the query/key width), and θ lives inside ``rope_parameters``.
DEEPSEEK_V3_NAMES: dict[str, str] = {
    **{ours: theirs for ours, theirs in HF_NAMES.items() if ours != "head_dim"},
    **{name: name for name in ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim",
                               "qk_rope_head_dim", "v_head_dim", "rope_interleave")},
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
            "v_head_dim")
# DeepseekV3 settings that change what the model computes and that we do not model, with the
# only value we accept and why (the error names the field and says this).
UNSUPPORTED_DEEPSEEK_V3: dict[str, tuple[Any, str]] = {
    "attention_bias": (False, ("q_a_proj, kv_a_proj_with_mqa and o_proj would carry biases, "
                               "which depthattn's MLA has none of")),
    "hidden_act": ("silu", "depthattn's MLP is SwiGLU"),
    "attention_dropout": (0.0, "depthattn's attention has no dropout"),
}
# Set so that a written DeepseekV3Config builds no mixture-of-experts layer and no MTP module:
# first_k_dense_replace = num_hidden_layers does it; the rest records that there are none.
DENSE_DEEPSEEK_V3: dict[str, Any] = {
    "n_routed_experts": 0, "n_shared_experts": 0, "moe_intermediate_size": 0,
    "num_experts_per_tok": None, "n_group": None, "topk_group": None, "num_mtp_layers": 0}


def _refuse(name: str, value: Any, why: str) -> DepthAttnError:
    return DepthAttnError(f"DeepseekV3 {name} ({value!r}) is not supported: {why}")


def check_deepseek_v3(raw: Mapping[str, Any]) -> None:
    """Refuse, by name, each DeepseekV3 setting of ``raw`` (a config as a dict) that depthattn
    would not compute as transformers' DeepseekV3ForCausalLM does."""
    layers = raw.get("num_hidden_layers")
    dense = raw.get("first_k_dense_replace")
    if dense is None or (layers is not None and dense < layers):
        raise _refuse("first_k_dense_replace", dense,
                      f"layers {dense or 0}..{(layers or 1) - 1} of num_hidden_layers ({layers}) "
                      f"would have mixture-of-experts MLPs (a router, routed and shared "
                      f"experts), which depthattn does not model; only dense DeepseekV3 models "
                      f"convert (first_k_dense_replace >= num_hidden_layers)")
    for name, (allowed, why) in UNSUPPORTED_DEEPSEEK_V3.items():
        value = raw.get(name, allowed)
        if value != allowed:
            raise _refuse(name, value, f"allowed: {allowed!r} ({why})")
    heads, kv_heads = raw.get("num_attention_heads"), raw.get("num_key_value_heads")
    if kv_heads is not None and kv_heads != heads:
        raise _refuse("num_key_value_heads", kv_heads,
                      f"it must equal num_attention_heads ({heads}): in MLA every head reads "
                      f"the one latent entry (kv_b_proj makes a key and value per query head)")
    if raw.get("quantization_config") is not None:
        method = raw["quantization_config"].get("quant_method", "?")
        raise _refuse("quantization_config", method,
                      "the weights are quantized; dequantize them to a floating-point "
                      "safetensors checkpoint first")
    rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise _refuse("rope_parameters.rope_type", kind,
                      "only 'default' (unscaled) RoPE is; a scaled RoPE changes the rotary "
                      "frequencies, and yarn's mscale_all_dim also multiplies the attention "
                      "scale of every dim, neither of which depthattn's MLA models")
    partial = rope.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise _refuse("rope_parameters.partial_rotary_factor", partial,
                      "allowed: 1.0 (every qk_rope_head_dim dim rotates; DeepseekV3's default "
                      "RoPE ignores the factor)")


def fields_from_deepseek_v3(hf_config: DeepseekV3Config | Mapping[str, Any]) -> dict[str, Any]:
    """ModelConfig fields (no method) of a ``transformers.DeepseekV3Config`` (or its dict): an
    MLA model; refuses what we do not model (``check_deepseek_v3``)."""
    raw = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
    missing = [name for name in REQUIRED if raw.get(name) is None]
    if missing:
        raise DepthAttnError(f"the config (DeepseekV3) has no {', '.join(map(repr, missing))}")
    check_deepseek_v3(raw)
    fields: dict[str, Any] = {ours: raw[theirs] for ours, theirs in DEEPSEEK_V3_NAMES.items()
                              if raw.get(theirs) is not None}
    fields["attention"] = "mla"
    fields["num_kv_heads"] = fields["num_heads"]
    fields["tie_embeddings"] = bool(fields.get("tie_embeddings", False))
    # DeepseekV3 tests `if config.rope_interleave`: None rotates halves, as False does
    fields["rope_interleave"] = bool(raw.get("rope_interleave"))
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    theta = rope.get("rope_theta", raw.get("rope_theta"))
    if theta is None:
        raise DepthAttnError("the config (DeepseekV3) names no rope_theta")
    fields["rope_theta"] = float(theta)
    return fields


def deepseek_v3_config_from_fields(fields: Mapping[str, Any]) -> DeepseekV3Config:
    """The ``transformers.DeepseekV3Config`` of the MLA geometry in ``fields``
    (ModelConfig.to_dict()): dense (no mixture-of-experts layer, no MTP module), default RoPE."""
    from transformers import DeepseekV3Config

    attention = fields.get("attention", "gqa")
    if attention != "mla":
        raise DepthAttnError(f"attention ({attention!r}) has no DeepseekV3Config: "
                             f"DeepseekV3 is multi-head latent attention ('mla'); a 'gqa' model "
                             f"converts to Qwen3 instead")
    for name in ("rope_parameters", "sliding_window"):
        if fields.get(name) is not None:
            raise DepthAttnError(f"{name} ({fields[name]!r}) has no DeepseekV3 equivalent here")
    return DeepseekV3Config(
        **{theirs: fields[ours] for ours, theirs in DEEPSEEK_V3_NAMES.items()},
        rope_parameters={"rope_type": "default", "rope_theta": fields["rope_theta"]},
        first_k_dense_replace=fields["num_layers"],
        **DENSE_DEEPSEEK_V3,
        **{name: allowed for name, (allowed, _) in UNSUPPORTED_DEEPSEEK_V3.items()})
