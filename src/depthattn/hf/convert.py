"""`depthattn convert`: Qwen3 and dense DeepseekV3 checkpoints ↔ depthattn, and the authors'
released checkpoints (docs/usage.md; the authors' format: docs/design.md §3). Every source is read by
``depthattn.io.load_model``; a retrofitted Depth-Attention model is no longer the pretrained
model (its weights never saw the depth mix) and needs continued training before use.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from depthattn.hf.export import TOKENIZER_FILES
from depthattn.hf.modeling import DepthAttnForCausalLM
from depthattn.io import CONFIG_NAME, WEIGHTS_NAME, load_model, read_config_json
from depthattn.model.decoder import CausalLM
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "generation_config.json"


def _copy_tokenizer(src: Path, out: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
            copied.append(name)
    return copied


def _token_ids(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: raw[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if raw.get(k) is not None}


def _save_hf(core: CausalLM, out: Path, src: Path, token_ids: dict[str, Any]) -> Path:
    """save_pretrained ``core`` with the source's token ids and tokenizer files."""
    model = DepthAttnForCausalLM.from_core(core, **token_ids)
    for name, value in token_ids.items():
        setattr(model.generation_config, name, value)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    copied = _copy_tokenizer(src, out)
    logger.info("wrote %s (method %s%s)", out, core.config.method,
                f", tokenizer: {', '.join(copied)}" if copied else ", no tokenizer files found")
    return out


def _check_model_type(src: Path, raw: dict[str, Any], model_type: str, flag: str) -> None:
    if raw.get("model_type") != model_type:
        hint = {"qwen3": " (use --from-qwen3)", "deepseek_v3": " (use --from-deepseek-v3)",
                "llama": " (use --from-official for the authors' Llama-format checkpoints)"}
        raise DepthAttnError(f"{src} holds a {raw.get('model_type')!r} model; {flag} needs "
                             f"model_type {model_type!r}{hint.get(raw.get('model_type'), '')}")


def _retrofit(src: Path, out: Path, raw: dict[str, Any], kind: str, method: str,
              overrides: dict[str, Any] | None, method_options: dict[str, Any]) -> Path:
    """``src`` (a ``kind`` folder) with ``method`` run on its unchanged weights → ``out``."""
    taken = sorted({"method", "method_options"} & set(overrides or {}))
    if taken:
        raise DepthAttnError(f"{', '.join(taken)} cannot be a model override here: the method and "
                             f"its options are from_{kind}'s own arguments (--method, --stride, "
                             f"...)")
    core = load_model(src, method=method, method_options=method_options, overrides=overrides)
    if method != "vanilla":
        logger.warning("retrofitted %s onto pretrained %s weights: the model needs continued "
                       "training before use (the weights never saw the depth mix)", method, kind)
    return _save_hf(core, out, src, _token_ids(raw))


def from_qwen3(src: str | Path, out: str | Path, method: str = "depth_attention",
               overrides: dict[str, Any] | None = None, **method_options: Any) -> Path:
    """A local Qwen3 folder → a depthattn Hugging Face folder; weights unchanged.
    ``overrides``: model fields beside the Qwen3 geometry, e.g. a looped reading of the same
    layers, ``{"prelude_layers": 1, "loop_layers": 2, "loop_iterations": 3}``."""
    src, out = Path(src), Path(out)
    raw = read_config_json(src)
    _check_model_type(src, raw, "qwen3", "--from-qwen3")
    if (overrides or {}).get("loop_injection") == "concat":  # not in the Qwen3 weights
        raise DepthAttnError("loop_injection 'concat' adds an adapter that a Qwen3 checkpoint does "
                             "not hold; convert with 'none' or 'add'")
    return _retrofit(src, out, raw, "qwen3", method, overrides, method_options)


def from_deepseek_v3(src: str | Path, out: str | Path, method: str = "depth_attention",
                     overrides: dict[str, Any] | None = None, **method_options: Any) -> Path:
    """A local dense DeepseekV3 folder → a depthattn Hugging Face folder of the MLA model
    (docs/method.md §9); weights unchanged. Mixture-of-experts layers, scaled RoPE, attention
    biases and the like are refused by name (``depthattn.model.deepseek_v3_names``); stored
    multi-token prediction modules are dropped with a warning. With Depth-Attention,
    ``mla_mix`` ("latent", the default, or "values") chooses what the mix reaches."""
    src, out = Path(src), Path(out)
    raw = read_config_json(src)
    _check_model_type(src, raw, "deepseek_v3", "--from-deepseek-v3")
    return _retrofit(src, out, raw, "deepseek_v3", method, overrides, method_options)


def _vanilla_model(src: Path, flag: str, target: str) -> CausalLM:
    model = load_model(src)
    if model.config.method != "vanilla":
        raise DepthAttnError(f"{src} runs method {model.config.method!r}; only 'vanilla' has a "
                             f"{target} equivalent ({flag} would silently drop the method)")
    return model


def _write_hf_folder(model: CausalLM, hf_config: Any, src: Path, out: Path) -> Path:
    """``model``'s weights under their own (transformers') names and ``hf_config``, with the
    source's token ids, generation config and tokenizer files."""
    from transformers import GenerationConfig

    # a Hugging Face folder of ours names its token ids; our own folders have none
    token_ids = _token_ids(read_config_json(src) if (src / CONFIG_NAME).is_file() else {})
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # not the class's defaults
        setattr(hf_config, name, token_ids.get(name))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / WEIGHTS_NAME, metadata={"format": "pt"})
    hf_config.save_pretrained(out)
    if (src / GENERATION_CONFIG_NAME).is_file():
        shutil.copy2(src / GENERATION_CONFIG_NAME, out / GENERATION_CONFIG_NAME)
    else:
        GenerationConfig(**token_ids).save_pretrained(out)
    _copy_tokenizer(src, out)
    return out


def to_qwen3(src: str | Path, out: str | Path) -> Path:
    """A vanilla depthattn model (any folder ``load_model`` reads) → a Qwen3 folder."""
    src, out = Path(src), Path(out)
    model = _vanilla_model(src, "--to-qwen3", "Qwen3")
    config = model.config
    if config.k_norm_position != "before_rope":
        raise DepthAttnError(f"{src} normalises keys {config.k_norm_position.replace('_', ' ')} "
                             f"(k_norm_position={config.k_norm_position!r}); Qwen3 normalises them "
                             f"before RoPE, so the converted model would compute something else")
    qwen3 = config.to_qwen3()
    qwen3.architectures = ["Qwen3ForCausalLM"]
    return _write_hf_folder(model, qwen3, src, out)


def to_deepseek_v3(src: str | Path, out: str | Path) -> Path:
    """A vanilla depthattn MLA model (any folder ``load_model`` reads) → a dense DeepseekV3
    folder (first_k_dense_replace = num_hidden_layers), which transformers loads as
    ``DeepseekV3ForCausalLM``."""
    src, out = Path(src), Path(out)
    model = _vanilla_model(src, "--to-deepseek-v3", "DeepseekV3")
    deepseek_v3 = model.config.to_deepseek_v3()
    deepseek_v3.architectures = ["DeepseekV3ForCausalLM"]
    return _write_hf_folder(model, deepseek_v3, src, out)


def from_official(src: str | Path, out: str | Path) -> Path:
    """The authors' checkpoint folder → a depthattn Hugging Face folder with the same outputs
    as their code on full sequences (and correct cached decoding, which theirs lacks)."""
    src, out = Path(src), Path(out)
    raw = read_config_json(src)
    if raw.get("model_type") != "llama":
        hint = " (use --from-qwen3)" if raw.get("model_type") == "qwen3" else ""
        raise DepthAttnError(f"{src} holds a {raw.get('model_type')!r} model, not the authors' "
                             f"format (model_type 'llama'){hint}")
    return _save_hf(load_model(src), out, src, _token_ids(raw))
