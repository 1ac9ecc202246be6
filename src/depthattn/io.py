"""Model folders: ``load_model`` reads every kind, ``save_model`` writes ours.

``load_model(path)`` takes whatever model folder ``path`` is (``folder_kind``) to a core
``CausalLM``:

    run        a training run directory: its final model/, else its newest intact checkpoint
    dcp        a distributed run's checkpoint (dcp/.metadata + config.json), whole, in one process
    depthattn  our model folder (``save_model``'s, and every single-process checkpoint):
               config.json (``"format": "depthattn"`` + the ModelConfig) and model.safetensors
    hf         a Hugging Face folder of our model (``DepthAttnForCausalLM.save_pretrained``'s):
               config.json with model_type ``depthattn`` holds the ModelConfig fields
    qwen3      a Qwen3 Hugging Face folder: the same parameter names (docs/design.md §2.2), so a
               method without parameters of its own runs on its weights unchanged
    deepseek_v3  a dense DeepseekV3 Hugging Face folder (no mixture-of-experts layer): an MLA
               model with the same parameter names (docs/method.md §9); its multi-token
               prediction modules, if stored, are dropped (only speculative decoding reads them)
    official   the Depth-Attention authors' format: a Llama-type config.json with their keys
               (``use_qk_norm``, ``use_depth_attention``, ``recurrent_model``, ...) and Qwen3
               key names; keys normalised after RoPE (docs/design.md §3.3), their unused
               ``lm_head_layernorm`` dropped (§3.4). ``depthattn convert --from-official`` writes
               such a folder out as a Hugging Face one.

Weights are safetensors (model.safetensors, or the shards its index names), taken strictly:
every tensor of the model, of its shape, and nothing else. ``save_model`` writes the weights,
then the config, each atomically (a temporary name, then a rename), so a folder with a config
is complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.model.deepseek_v3_names import fields_from_deepseek_v3
from depthattn.model.qwen3_names import fields_from_hf, fields_from_qwen3
from depthattn.train.run_dir import RunDir, find_tokenizer
from depthattn.utils.atomic import atomic_write, write_text_atomic
from depthattn.utils.errors import DepthAttnError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARDS_DIR = "dcp"  # a distributed checkpoint's DCP folder (depthattn.train.checkpoint)

FolderKind = Literal["run", "dcp", "depthattn", "hf", "qwen3", "deepseek_v3", "official"]
# What each kind is, as the error for a folder of no kind lists them.
KINDS: dict[str, str] = {
    "run": "a training run directory (its final model/, else its newest intact checkpoint)",
    "dcp": "a distributed run's checkpoint (dcp/.metadata and config.json)",
    "depthattn": "a depthattn model folder or checkpoint (config.json with \"format\": "
                 "\"depthattn\", and model.safetensors)",
    "hf": "a Hugging Face folder of a depthattn model (config.json with model_type "
          "'depthattn')",
    "qwen3": "a Qwen3 Hugging Face folder (config.json with model_type 'qwen3')",
    "deepseek_v3": "a dense DeepseekV3 Hugging Face folder (config.json with model_type "
                   "'deepseek_v3')",
    "official": "a checkpoint in the Depth-Attention authors' format (config.json with "
                "model_type 'llama' and their use_qk_norm / use_depth_attention keys)",
}


def save_model(model: CausalLM, directory: str | Path) -> Path:
    """Write ``model`` to ``directory`` (created if needed); weights first, config last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # shared with model.embed_tokens.weight
    atomic_write(directory / WEIGHTS_NAME,
                 lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    config = json.dumps({"format": "depthattn", **model.config.to_dict()}, indent=2) + "\n"
    write_text_atomic(directory / CONFIG_NAME, config)
    return directory


# --- which kind ------------------------------------------------------------------------------
def read_config_json(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a model folder, with errors that say what the folder lacks."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    config = directory / CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint folder: it has no {CONFIG_NAME}")
    try:
        return json.loads(config.read_text())
    except json.JSONDecodeError as error:
        raise DepthAttnError(f"{config} is not valid JSON: {error}") from None


def is_sharded(path: str | Path) -> bool:
    """A checkpoint written through torch.distributed.checkpoint (a distributed run's)."""
    return (Path(path) / SHARDS_DIR / ".metadata").is_file()


# Hugging Face model_type -> kind; the only Llama-type checkpoints we read are the authors'.
_MODEL_TYPES: dict[str, FolderKind] = {"depthattn": "hf", "qwen3": "qwen3",
                                       "deepseek_v3": "deepseek_v3", "llama": "official"}


def _accepted() -> str:
    return "depthattn loads a model from " + "; ".join(KINDS.values())


def folder_kind(path: str | Path) -> FolderKind:
    """What kind of model folder ``path`` is (the module docstring lists them), from its file
    names and config.json alone; an error naming the path and the accepted kinds when none."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"{path} {what}. {_accepted()}")
    if is_sharded(path):
        return "dcp"
    run = RunDir(path)
    if run.is_run() or (run.model_dir / CONFIG_NAME).is_file() or run.checkpoints():
        return "run"
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder: it has no {CONFIG_NAME} and "
                                f"is no training run. {_accepted()}")
    raw = read_config_json(path)
    if raw.get("format") == "depthattn":
        return "depthattn"
    if raw.get("model_type") not in _MODEL_TYPES:
        raise DepthAttnError(f"{path} holds a {raw.get('model_type')!r} model, which depthattn does "
                             f"not read. {_accepted()}")
    return _MODEL_TYPES[raw["model_type"]]


# --- the one loader --------------------------------------------------------------------------
def load_model(directory: str | Path, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, *, method: str | None = None,
               method_options: Mapping[str, Any] | None = None,
               overrides: Mapping[str, Any] | None = None) -> CausalLM:
    """The model in ``directory``, a folder of any kind ``folder_kind`` names, as a ``CausalLM``.

    device, dtype: where its tensors go and as what (default: the CPU, the stored dtype).
    method, method_options: the cross-layer method to run on the weights instead of the
        folder's own (a Qwen3 folder has none: ``vanilla``); without ``method``,
        ``method_options`` change the folder's method's options. A method whose parameters the
        weights lack is refused by name.
    overrides: other ModelConfig fields, e.g. ``{"loop_iterations": 4}`` (test-time depth) or a
        looped reading of a Qwen3 folder's layers, ``{"prelude_layers": 1, "loop_layers": 2}``.

        model = load_model("runs/tiny")                   # its final model
        model = load_model("Qwen3-0.6B", method="depth_attention", method_options={"stride": 4})
    """
    path = Path(directory)
    kind = folder_kind(path)
    if kind == "run":
        found = RunDir(path).model_path()
        if found is None:
            raise FileNotFoundError(f"{path} is a training run with neither a final model "
                                    f"(model/) nor an intact checkpoint (checkpoints/)")
        return load_model(found, device, dtype, method=method, method_options=method_options,
                          overrides=overrides)
    raw = read_config_json(path)
    saved = _READ_CONFIG[kind](path, raw)
    config = _with_changes(saved, method, method_options, overrides)
    if kind == "dcp":
        state = _read_dcp(path, ModelConfig.from_dict(saved))
    else:
        state = _read_safetensors(path, device)
    if kind == "official":
        state.pop("lm_head_layernorm.weight", None)  # unused by their forward (design.md §3.4)
    if kind == "deepseek_v3":
        _drop_mtp_layers(state, config.num_layers)
    return model_from_state(config, state, device, dtype)


def _with_changes(fields: dict[str, Any], method: str | None,
                  method_options: Mapping[str, Any] | None,
                  overrides: Mapping[str, Any] | None) -> ModelConfig:
    """The folder's ModelConfig fields with the caller's method and overrides."""
    overrides = dict(overrides or {})
    taken = sorted({"method", "method_options"} & set(overrides))
    if taken:
        raise DepthAttnError(f"{', '.join(taken)} cannot be an override: give the method as "
                             f"method= and its options as method_options=")
    fields = {**fields, **overrides}
    if method is not None:
        fields.update(method=method, method_options=dict(method_options or {}))
    elif method_options is not None:
        fields["method_options"] = {**fields.get("method_options", {}), **method_options}
    return ModelConfig.from_dict(fields)


def model_from_state(config: ModelConfig, state: dict[str, torch.Tensor],
                     device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> CausalLM:
    """A model of ``config`` holding the tensors of ``state`` as they are (built on the meta
    device: no initialisation wasted); every tensor must be there, of its shape, and no other."""
    with torch.device("meta"):
        model = CausalLM(config)
    _check_state(config, model.state_dict(), state)
    if config.tie_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    rope = model.model.rotary_emb  # a non-persistent buffer: recompute it on the real device
    rope.inv_freq = torch.empty_like(rope.inv_freq, device=device or "cpu")
    rope.reset_parameters()
    return model.to(device=device, dtype=dtype) if (device or dtype) else model


def _check_state(config: ModelConfig, expected: dict[str, torch.Tensor],
                 state: dict[str, torch.Tensor]) -> None:
    """Name what differs between the checkpoint's tensors and those ``config``'s model has."""
    adapter = "model.loop_injection.weight"
    if adapter in expected and adapter not in state:
        raise DepthAttnError(f"the checkpoint has no {adapter}: its config asks for "
                             f"loop_injection='concat' (the Linear(2D -> D) adapter), but its "
                             f"weights were not trained with one; load it with the loop_injection "
                             f"it was trained with")
    wanted = set(expected) - ({"lm_head.weight"} if config.tie_embeddings else set())
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        added = any(k.startswith("model.cross_layer.") for k in missing)
        hint = (f"; method {config.method!r} adds parameters the checkpoint does not have "
                f"(choose a parameter-free method: vanilla, depth_attention)" if added else "")
        raise DepthAttnError(f"the checkpoint does not match the model: missing "
                             f"{missing[:5] or 'none'}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {unexpected[:5] or 'none'}"
                             f"{'...' if len(unexpected) > 5 else ''}{hint}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise DepthAttnError(f"{name} has shape {tuple(tensor.shape)} but the config implies "
                                 f"{tuple(expected[name].shape)}")


# --- one reader of config.json per kind: ModelConfig fields ----------------------------------
def _ours(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != "format"}


def _hugging_face(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(ModelConfig)}  # it holds every one of them
    return {k: v for k, v in raw.items() if k in names}


def _qwen3(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    from transformers import Qwen3Config

    return fields_from_qwen3(Qwen3Config.from_pretrained(path))


def _deepseek_v3(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    from transformers import DeepseekV3Config

    return fields_from_deepseek_v3(DeepseekV3Config.from_pretrained(path))


def _drop_mtp_layers(state: dict[str, torch.Tensor], num_layers: int) -> None:
    """A DeepseekV3 checkpoint keeps its multi-token prediction modules as layers num_layers,
    num_layers + 1, ... (transformers' ``MtpModel`` reads them for ``generate(use_mtp=True)``
    only); the model's own forward never does, so they are dropped, with a warning."""
    mtp = [key for key in state
           if key.startswith("model.layers.") and int(key.split(".")[2]) >= num_layers]
    if mtp:
        extra = sorted({int(k.split(".")[2]) for k in mtp})
        for key in mtp:
            del state[key]
        logger.warning("dropped the multi-token prediction module(s) stored as layer(s) %s: "
                       "depthattn does not model them (they serve speculative decoding only; "
                       "the model's logits do not read them)", ", ".join(map(str, extra)))


# The authors' config keys whose value we check (name -> allowed values); any other key we do
# not know is reported and ignored.
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


def _official(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """The authors' config.json: their Llama names for the geometry, keys normalised after
    RoPE, and Depth-Attention only when ``use_depth_attention`` and ``recurrent_model`` are
    both true (as in their code); otherwise their vanilla-with-qk-norm control."""
    where = f" {path / CONFIG_NAME}"
    bad = []
    for key, allowed in _OFFICIAL_REQUIRED.items():
        default = None if key in ("rope_scaling", "baseline_mode", "cross_layer_mode",
                                  "cross_layer_pattern") else allowed[0]
        value = raw.get(key, default)  # an absent use_qk_norm is their code's default, True
        if value not in allowed:
            bad.append(f"{key}={value!r} (allowed: {', '.join(map(repr, allowed))})")
    rope = raw.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        bad.append(f"rope_parameters.rope_type={rope.get('rope_type')!r} (allowed: 'default')")
    if bad:
        raise DepthAttnError(f"unsupported option(s) in the official config{where}: "
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
    method, options = "vanilla", {}
    if depth and raw.get("recurrent_model", False):
        method = "depth_attention"
        # their code's defaults when the keys are absent: stride 1, window 0 (design.md §3.5)
        options = {"stride": int(raw.get("depth_attention_stride",
                                         raw.get("depth_softmax_stride", 1))),
                   "recent_window": int(raw.get("depth_attention_recent_window",
                                                raw.get("depth_recent_window", 0)))}
    # Absent values take their code's defaults, which are ModelConfig's (max length 2048,
    # eps 1e-6, init 0.02, untied), except theta: 10 000.
    geometry = fields_from_hf(raw, f" (official{where})", rope_theta_default=10000.0)
    return {**geometry, "k_norm_position": "after_rope", "method": method,
            "method_options": options}


_READ_CONFIG = {"dcp": _ours, "depthattn": _ours, "hf": _hugging_face, "qwen3": _qwen3,
                "deepseek_v3": _deepseek_v3, "official": _official}


# --- weights ---------------------------------------------------------------------------------
def _read_safetensors(directory: Path,
                      device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    index = directory / INDEX_NAME
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
             if index.is_file() else [WEIGHTS_NAME])
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a checkpoint folder: {missing[0]} is "
                                f"missing (weights must be safetensors)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(directory / name, device=str(device or "cpu")))
    return state


def _read_dcp(path: Path, saved: ModelConfig) -> dict[str, torch.Tensor]:
    """The model tensors of a DCP checkpoint, whole, on the CPU of this one process."""
    import torch.distributed.checkpoint as dcp

    with torch.device("meta"):
        skeleton = CausalLM(saved)
    state = {k: torch.empty_like(v, device="cpu") for k, v in skeleton.state_dict().items()}
    dcp.load({"model": state}, checkpoint_id=str(path / SHARDS_DIR), no_dist=True)
    if saved.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


# --- what goes with a model ------------------------------------------------------------------
def load_tokenizer_for(path: str | Path, tokenizer: Any = None, prepare: bool = False) -> Any:
    """The tokenizer for the model at ``path``: ``tokenizer`` when given (a tokenizer.json, a
    tokenizer folder, or a loaded tokenizer), else the one ``find_tokenizer`` finds for ``path``
    (``prepare``: a run's data is prepared if missing); a clear error when there is none.
    Separate from ``load_model``: loading a tokenizer is not loading a model."""
    from depthattn.data.tokenizer import load_tokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    source = Path(tokenizer) if tokenizer is not None else find_tokenizer(path, prepare=prepare)
    if source is None:
        raise FileNotFoundError(
            f"no tokenizer found for {path} (neither tokenizer files in the folder nor a "
            f"training run whose prepared data is on this machine); pass --tokenizer "
            f"(a tokenizer.json or a tokenizer folder)")
    return load_tokenizer(source)
