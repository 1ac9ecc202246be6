"""`depthattn convert`: Qwen3 checkpoints ↔ depthattn, and the authors' released checkpoints.

- ``--from-qwen3 DIR --method depth_attention [--stride S --recent-window W]``: any local Qwen3
  folder → a depthattn Hugging Face folder, no weight changed (Depth-Attention has no
  parameters). A retrofitted Depth-Attention model is NOT the pretrained model any more: its
  weights never saw the depth mix, so it needs continued training before use.
- ``--to-qwen3 DIR``: a vanilla depthattn model (keys normalised before RoPE, as Qwen3) back to
  a ``Qwen3ForCausalLM`` folder; other methods have no Qwen3 equivalent and are refused.
- ``--from-run RUN_DIR``: a training run (its ``model/``, else its newest checkpoint) → a
  Hugging Face folder, with the tokenizer of the run's prepared data when it is on this machine.
- ``--from-official DIR``: the authors' format (docs/design.md §3): a
  Llama-type config.json with ``use_qk_norm``, ``use_depth_attention``, ``recurrent_model``,
  ``depth_attention_stride``, ``depth_attention_recent_window``, and safetensors with Qwen3 key
  names plus an unused ``lm_head_layernorm.weight``. Their attention normalises keys after
  RoPE, so the model gets ``k_norm_position="after_rope"``; Depth-Attention runs only when
  ``use_depth_attention`` and ``recurrent_model`` are both true (as in their code), otherwise
  the checkpoint is their vanilla-with-qk-norm control.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from depthattn.hf import DepthAttnForCausalLM
from depthattn.hf.export import TOKENIZER_FILES, load_pretrained_any
from depthattn.io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    model_from_state,
    read_config_json,
    read_safetensors,
)
from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.model.qwen3_names import fields_from_hf

logger = logging.getLogger(__name__)

OFFICIAL_UNUSED_KEYS = ("lm_head_layernorm.weight",)


# --- shared helpers -------------------------------------------------------------------------
def _copy_tokenizer(src: Path, out: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
            copied.append(name)
    return copied


def _save_hf_from_state(config: ModelConfig, state: dict[str, torch.Tensor], out: Path,
                        src: Path, token_ids: dict[str, Any]) -> Path:
    """Strictly load ``state`` into a depthattn model of ``config`` and save_pretrained it."""
    _check_state_keys(config, state)
    core = model_from_state(config, state)
    model = DepthAttnForCausalLM.from_core(core, **token_ids)
    for name, value in token_ids.items():
        setattr(model.generation_config, name, value)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    copied = _copy_tokenizer(src, out)
    logger.info("wrote %s (method %s%s)", out, config.method,
                f", tokenizer: {', '.join(copied)}" if copied else ", no tokenizer files found")
    return out


def _check_state_keys(config: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    """The checkpoint must hold exactly the parameters of ``config``'s model: name what differs."""
    with torch.device("meta"):
        expected = CausalLM(config).state_dict()
    wanted = set(expected) - ({"lm_head.weight"} if config.tie_embeddings else set())
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        extra = [k for k in missing if k.startswith("model.cross_layer.")]
        hint = (f"; method {config.method!r} adds parameters a Qwen3 checkpoint does not have "
                f"(choose a parameter-free method: vanilla, depth_attention)" if extra else "")
        raise ValueError(f"the checkpoint does not match the model: missing "
                         f"{missing[:5] or 'none'}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5] or 'none'}"
                         f"{'...' if len(unexpected) > 5 else ''}{hint}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but the config implies "
                             f"{tuple(expected[name].shape)}")


def _token_ids(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: raw[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if raw.get(k) is not None}


# --- Qwen3 → depthattn ----------------------------------------------------------------------
def from_qwen3(src: str | Path, out: str | Path, method: str = "depth_attention",
               overrides: dict[str, Any] | None = None, **method_options: Any) -> Path:
    """A local Qwen3 folder → a depthattn Hugging Face folder; weights unchanged.
    ``overrides``: model fields beside the Qwen3 geometry, e.g. a looped reading of the same
    layers, ``{"prelude_layers": 1, "loop_layers": 2, "loop_iterations": 3}``."""
    from transformers import Qwen3Config

    src, out = Path(src), Path(out)
    raw = read_config_json(src)
    if raw.get("model_type") != "qwen3":
        raise ValueError(f"{src} holds a {raw.get('model_type')!r} model; --from-qwen3 needs "
                         f"model_type 'qwen3' (use --from-official for the authors' Llama-format "
                         f"checkpoints)")
    hf_config = Qwen3Config.from_pretrained(src)
    taken = sorted({"method", "method_options"} & set(overrides or {}))
    if taken:
        raise ValueError(f"{', '.join(taken)} cannot be a model override here: the method and "
                         f"its options are from_qwen3's own arguments (--method, --stride, ...)")
    config = ModelConfig.from_qwen3(hf_config, method=method, overrides=overrides,
                                    **method_options)
    if config.loop_injection == "concat":  # its adapter is not in the Qwen3 weights
        raise ValueError("loop_injection 'concat' adds an adapter that a Qwen3 checkpoint does "
                         "not hold; convert with 'none' or 'add'")
    if method != "vanilla":
        logger.warning("retrofitted %s onto pretrained Qwen3 weights: the model needs continued "
                       "training before use (the weights never saw the depth mix)", method)
    return _save_hf_from_state(config, read_safetensors(src), out, src, _token_ids(raw))


# --- depthattn → Qwen3 ----------------------------------------------------------------------
def to_qwen3(src: str | Path, out: str | Path) -> Path:
    """A vanilla depthattn model (any folder ``load_pretrained_any`` reads) → a Qwen3 folder."""
    src, out = Path(src), Path(out)
    model = load_pretrained_any(src)
    config = model.core_config
    if config.method != "vanilla":
        raise ValueError(f"{src} runs method {config.method!r}; only 'vanilla' has a Qwen3 "
                         f"equivalent (--to-qwen3 would silently drop the method)")
    if config.k_norm_position != "before_rope":
        raise ValueError(f"{src} normalises keys {config.k_norm_position.replace('_', ' ')} "
                         f"(k_norm_position={config.k_norm_position!r}); Qwen3 normalises them "
                         f"before RoPE, so the converted model would compute something else")
    qwen3 = config.to_qwen3()
    for name, value in _token_ids(model.config.to_dict()).items():
        setattr(qwen3, name, value)
    qwen3.architectures = ["Qwen3ForCausalLM"]
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        state.pop("lm_head.weight")
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / WEIGHTS_NAME, metadata={"format": "pt"})
    qwen3.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    _copy_tokenizer(src, out)
    return out


# --- the authors' checkpoints ---------------------------------------------------------------
# Keys whose value we check (name → allowed values); anything else we do not know is reported.
_OFFICIAL_REQUIRED = {
    "model_type": ("llama",),
    "hidden_act": ("silu",),
    "attention_bias": (False,),
    "mlp_bias": (False,),
    "use_qk_norm": (True,),  # our decoder always has q/k norms
    "scale_embeds": (False,),
    "rope_scaling": (None,),
    "baseline_mode": (None, "", "none", "vanilla"),
    "pretraining_tp": (1,),
    "attention_dropout": (0, 0.0),
    "cross_layer_mode": (None, "depth_softmax", "depth_attention"),
    "cross_layer_pattern": (None, "depth_softmax", "depth_attention"),
}
_OFFICIAL_KNOWN = {
    "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
    "rope_theta", "rope_parameters", "rms_norm_eps", "initializer_range", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "torch_dtype", "dtype",
    "transformers_version", "_name_or_path", "recurrent_model", "use_depth_attention",
    "depth_attention_stride", "depth_attention_recent_window", "depth_softmax_stride",
    "depth_recent_window",
}


def official_model_config(raw: dict[str, Any], where: str = "") -> ModelConfig:
    """The ModelConfig equivalent to the authors' config.json (dict)."""
    bad = []
    for key, allowed in _OFFICIAL_REQUIRED.items():
        default = None if key in ("rope_scaling", "baseline_mode", "cross_layer_mode",
                                  "cross_layer_pattern") else allowed[0]
        value = raw.get(key, default)
        if key == "use_qk_norm" and key not in raw:
            value = True  # their code's default
        if value not in allowed:
            bad.append(f"{key}={value!r} (allowed: {', '.join(map(repr, allowed))})")
    rope = raw.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        bad.append(f"rope_parameters.rope_type={rope.get('rope_type')!r} (allowed: 'default')")
    if bad:
        raise ValueError(f"unsupported option(s) in the official config{where}: "
                         f"{'; '.join(bad)}")
    unknown = sorted(set(raw) - _OFFICIAL_KNOWN - set(_OFFICIAL_REQUIRED))
    if unknown:
        logger.warning("ignoring config keys not used by the authors' Depth-Attention model: %s",
                       ", ".join(unknown))
    depth = bool(raw.get("use_depth_attention", False)) or raw.get("cross_layer_mode") in (
        "depth_softmax", "depth_attention") or raw.get("cross_layer_pattern") in (
        "depth_softmax", "depth_attention")
    if depth and not raw.get("recurrent_model", False):
        logger.warning("use_depth_attention is set but recurrent_model is not: the authors' code "
                       "then runs without depth mixing, so the model is loaded as vanilla")
    depth = depth and bool(raw.get("recurrent_model", False))
    method, options = "vanilla", {}
    if depth:
        method = "depth_attention"
        # their modeling code's defaults when the keys are absent: stride 1, window 0
        options = dict(stride=int(raw.get("depth_attention_stride",
                                          raw.get("depth_softmax_stride", 1))),
                       recent_window=int(raw.get("depth_attention_recent_window",
                                                 raw.get("depth_recent_window", 0))))
    # Their Llama config uses Hugging Face's names; absent values take their code's defaults,
    # which are ModelConfig's (max length 2048, eps 1e-6, init 0.02, untied, theta 10 000).
    geometry = fields_from_hf(raw, f" (official{where})", rope_theta_default=10000.0)
    return ModelConfig(**geometry, k_norm_position="after_rope", method=method,
                       method_options=options)


def from_official(src: str | Path, out: str | Path) -> Path:
    """The authors' checkpoint folder → a depthattn Hugging Face folder with the same outputs
    as their code on full sequences (and correct cached decoding, which theirs lacks)."""
    src, out = Path(src), Path(out)
    raw = read_config_json(src)
    config = official_model_config(raw, where=f" {src / CONFIG_NAME}")
    state = read_safetensors(src)
    for key in OFFICIAL_UNUSED_KEYS:
        state.pop(key, None)  # their LM-head layernorm is never used in the forward
    return _save_hf_from_state(config, state, out, src, _token_ids(raw))
