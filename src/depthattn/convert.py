"""`depthattn convert`: Qwen3 checkpoints ↔ depthattn, and the authors' released checkpoints.

- ``--from-qwen3 DIR --method depth_attention [--stride S --recent-window W]``: any local Qwen3
  folder → a depthattn Hugging Face folder, no weight changed (Depth-Attention has no
  parameters). A retrofitted Depth-Attention model is NOT the pretrained model any more: its
  weights never saw the depth mix, so it needs continued training before use.
- ``--to-qwen3 DIR``: a vanilla depthattn model (keys normalised before RoPE, as Qwen3) back to
  a ``Qwen3ForCausalLM`` folder; other methods have no Qwen3 equivalent and are refused.
- ``--from-run RUN_DIR``: a training run (its ``model/``, else its newest checkpoint) → a
  Hugging Face folder, with the tokenizer of the run's prepared data when it is on this machine.
- ``--from-official DIR``: the authors' format (``../shared/research/official_impl.md``): a
  Llama-type config.json with ``use_qk_norm``, ``use_depth_attention``, ``recurrent_model``,
  ``depth_attention_stride``, ``depth_attention_recent_window``, and safetensors with Qwen3 key
  names plus an unused ``lm_head_layernorm.weight``. Their attention normalises keys after
  RoPE, so the model gets ``k_norm_position="after_rope"``; Depth-Attention runs only when
  ``use_depth_attention`` and ``recurrent_model`` are both true (as in their code), otherwise
  the checkpoint is their vanilla-with-qk-norm control.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from depthattn.config import ModelConfig
from depthattn.serialization import CONFIG_NAME, WEIGHTS_NAME

logger = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
OFFICIAL_UNUSED_KEYS = ("lm_head_layernorm.weight",)


# --- shared helpers -------------------------------------------------------------------------
def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    config = directory / CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint folder: it has no {CONFIG_NAME}")
    try:
        return json.loads(config.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config} is not valid JSON: {error}") from None


def read_safetensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    directory = Path(directory)
    index = directory / INDEX_NAME
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
             if index.is_file() else [WEIGHTS_NAME])
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a checkpoint folder: {name} is missing "
                                    f"(weights must be safetensors)")
        state.update(load_file(directory / name))
    return state


def _copy_tokenizer(src: Path, out: Path) -> list[str]:
    from depthattn.hf.export import TOKENIZER_FILES

    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
            copied.append(name)
    return copied


def _save_hf_from_state(config: ModelConfig, state: dict[str, torch.Tensor], out: Path,
                        src: Path, token_ids: dict[str, Any]) -> Path:
    """Strictly load ``state`` into a depthattn model of ``config`` and save_pretrained it."""
    from depthattn.hf import DepthAttnForCausalLM
    from depthattn.serialization import _model_from_state

    _check_state_keys(config, state)
    core = _model_from_state(config, state, device=None, dtype=None)
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
    from depthattn.model.transformer import CausalLM

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
               **method_options: Any) -> Path:
    """A local Qwen3 folder → a depthattn Hugging Face folder; weights unchanged."""
    from transformers import Qwen3Config

    src, out = Path(src), Path(out)
    raw = read_checkpoint_config(src)
    if raw.get("model_type") != "qwen3":
        raise ValueError(f"{src} holds a {raw.get('model_type')!r} model; --from-qwen3 needs "
                         f"model_type 'qwen3' (use --from-official for the authors' Llama-format "
                         f"checkpoints)")
    hf_config = Qwen3Config.from_pretrained(src)
    config = ModelConfig.from_qwen3(hf_config, method=method, **method_options)
    if method != "vanilla":
        logger.warning("retrofitted %s onto pretrained Qwen3 weights: the model needs continued "
                       "training before use (the weights never saw the depth mix)", method)
    return _save_hf_from_state(config, read_safetensors(src), out, src, _token_ids(raw))


# --- depthattn → Qwen3 ----------------------------------------------------------------------
def to_qwen3(src: str | Path, out: str | Path) -> Path:
    """A vanilla depthattn model (any folder ``load_pretrained_any`` reads) → a Qwen3 folder."""
    from depthattn.hf.export import load_pretrained_any

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
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"):
        if key not in raw:
            raise ValueError(f"the official config{where} has no {key!r}")
    return ModelConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"], num_layers=raw["num_hidden_layers"],
        num_heads=raw["num_attention_heads"],
        num_kv_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
        head_dim=raw.get("head_dim"), max_seq_len=raw.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6), init_std=raw.get("initializer_range", 0.02),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        k_norm_position="after_rope", method=method, method_options=options)


def from_official(src: str | Path, out: str | Path) -> Path:
    """The authors' checkpoint folder → a depthattn Hugging Face folder with the same outputs
    as their code on full sequences (and correct cached decoding, which theirs lacks)."""
    src, out = Path(src), Path(out)
    raw = read_checkpoint_config(src)
    config = official_model_config(raw, where=f" {src / CONFIG_NAME}")
    state = read_safetensors(src)
    for key in OFFICIAL_UNUSED_KEYS:
        state.pop(key, None)  # their LM-head layernorm is never used in the forward
    return _save_hf_from_state(config, state, out, src, _token_ids(raw))


# --- CLI ------------------------------------------------------------------------------------
def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-qwen3", metavar="DIR",
                        help="a local Qwen3 checkpoint folder; no weight is changed (a "
                             "retrofitted Depth-Attention model needs continued training)")
    source.add_argument("--to-qwen3", metavar="DIR",
                        help="a vanilla depthattn model (Hugging Face folder, model folder or "
                             "training run) to a Qwen3 folder")
    source.add_argument("--from-official", metavar="DIR",
                        help="a checkpoint folder in the Depth-Attention authors' format")
    source.add_argument("--from-run", metavar="RUN_DIR",
                        help="a `depthattn train` run directory (or a depthattn model folder) "
                             "to a Hugging Face folder, with the run's tokenizer when found")
    parser.add_argument("--tokenizer", default=None,
                        help="with --from-run: the tokenizer to include (default: the run's)")
    parser.add_argument("--method", default="depth_attention",
                        help="with --from-qwen3: the method to run (default depth_attention; "
                             "parameter-free methods only)")
    parser.add_argument("--stride", type=int, default=None,
                        help="Depth-Attention stride s (default num_layers // 2)")
    parser.add_argument("--recent-window", type=int, default=None,
                        help="Depth-Attention recent window w (default 0)")
    parser.add_argument("--out", required=True, help="output folder")


def run_convert(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder")
    options = {k: v for k, v in (("stride", args.stride),
                                 ("recent_window", args.recent_window)) if v is not None}
    if args.from_qwen3:
        if options and args.method != "depth_attention":
            raise ValueError("--stride/--recent-window apply to --method depth_attention only")
        path = from_qwen3(args.from_qwen3, out, args.method, **options)
    else:
        if options or args.method != "depth_attention":
            given = [f"--{k.replace('_', '-')}" for k in options]
            raise ValueError(f"{', '.join(given) or '--method'} only applies to --from-qwen3"
                             + (" (--from-official reads the method from the checkpoint)"
                                if args.from_official else ""))
        if args.tokenizer is not None and not args.from_run:
            raise ValueError("--tokenizer only applies to --from-run")
        if args.from_run:
            from depthattn.hf.export import export_run

            path = export_run(args.from_run, out, tokenizer=args.tokenizer)
        elif args.to_qwen3:
            path = to_qwen3(args.to_qwen3, out)
        else:
            path = from_official(args.from_official, out)
    print(f"wrote {path}")


# --- `depthattn generate` -------------------------------------------------------------------
def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a run directory, a depthattn (Hugging Face or model) "
                                     "folder or a Qwen3 folder")
    parser.add_argument("--prompt", action="append", required=True,
                        help="text to continue (repeat for several prompts)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.json or folder (default: the folder's, or the run's)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


def run_generate(args: argparse.Namespace) -> None:
    from transformers import TextStreamer

    from depthattn.hf.export import (
        check_tokenizer_fits,
        load_pretrained_any,
        load_tokenizer_for,
    )

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens ({args.max_new_tokens}) must be >= 1")
    if args.temperature < 0:
        raise ValueError(f"--temperature ({args.temperature}) must be >= 0 (0 = greedy)")
    tokenizer = load_tokenizer_for(args.path, args.tokenizer)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    model = load_pretrained_any(args.path, device=device).eval()
    check_tokenizer_fits(tokenizer, model)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    sampling = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k or 0,
                    top_p=args.top_p or 1.0) if args.temperature > 0 else dict(do_sample=False)
    for prompt in args.prompt:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        if ids.shape[1] == 0:
            raise ValueError(f"the prompt {prompt!r} encodes to no tokens")
        streamer = TextStreamer(tokenizer)
        model.generate(ids, max_new_tokens=args.max_new_tokens,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       streamer=streamer, generator=generator, **sampling)
