"""Loading any model folder as a ``DepthAttnForCausalLM``, finding its tokenizer, and exporting
a training run directory to the Hugging Face format (safetensors + config + generation config +
the run's tokenizer)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from depthattn.hf.configuration import DepthAttnConfig
from depthattn.hf.modeling import DepthAttnForCausalLM
from depthattn.serialization import CONFIG_NAME, load_any

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                   "chat_template.jinja")


def is_hf_depthattn_dir(path: str | Path) -> bool:
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == DepthAttnConfig.model_type
    except json.JSONDecodeError:
        return False


def load_pretrained_any(path: str | Path, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None) -> DepthAttnForCausalLM:
    """A Hugging Face depthattn folder, a training run directory, a depthattn model folder
    (``save_model``) or a Qwen3 Hugging Face folder, as a ``DepthAttnForCausalLM``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if is_hf_depthattn_dir(path):
        model = DepthAttnForCausalLM.from_pretrained(path, dtype=dtype)
        return model.to(device) if device is not None else model
    return DepthAttnForCausalLM.from_core(load_any(path, device=device, dtype=dtype))


def find_tokenizer_path(path: str | Path) -> Path | None:
    """Where the tokenizer of ``path`` lives: the folder itself (Hugging Face layout) or, for a
    training run, the tokenizer recorded in the manifest of its prepared data (not prepared
    now: None when that data is not on this machine)."""
    path = Path(path)
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        return path
    run_config = path / "train_config.json"
    if not run_config.is_file():
        return None
    data = json.loads(run_config.read_text()).get("data", "default")
    candidates = [Path(data) / "manifest.json" if Path(data).is_dir() else Path(data)]
    try:  # the cache folder `depthattn prepare` would use for this source
        from depthattn.data.pipeline import default_out_dir

        vocab = json.loads(run_config.read_text()).get("vocab_size", 8192)
        candidates.append(default_out_dir(data, None, vocab) / "manifest.json")
    except Exception as error:  # a source it cannot name (e.g. a missing file): no candidate
        logger.debug("no default data folder for %r: %s", data, error)
    for manifest_file in candidates:
        if manifest_file.name == "manifest.json" and manifest_file.is_file():
            manifest = json.loads(manifest_file.read_text())
            tokenizer = manifest.get("tokenizer", {}).get("path")
            if tokenizer:
                found = manifest_file.parent / tokenizer
                if found.exists():
                    return found
    return None


def load_tokenizer_for(path: str | Path, tokenizer: str | Path | None = None) -> Any:
    """The tokenizer given, else the one found for ``path``; a clear error when there is none."""
    from depthattn.data.tokenizer import load_tokenizer

    source = Path(tokenizer) if tokenizer is not None else find_tokenizer_path(path)
    if source is None:
        raise FileNotFoundError(
            f"no tokenizer found for {path} (neither tokenizer files in the folder nor a "
            f"training run whose prepared data is on this machine); pass --tokenizer "
            f"(a tokenizer.json or a tokenizer folder)")
    return load_tokenizer(source)


def check_tokenizer_fits(tokenizer: Any, model: DepthAttnForCausalLM) -> None:
    from depthattn.data.tokenizer import check_vocab_fits

    check_vocab_fits(len(tokenizer), model.config.vocab_size)


def save_hf(model: DepthAttnForCausalLM, out: str | Path, tokenizer: Any = None) -> Path:
    """save_pretrained (safetensors + config.json + generation_config.json) and the tokenizer."""
    out = Path(out)
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, model)
        for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                setattr(model.config, name, value)
                setattr(model.generation_config, name, value)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def export_run(run_dir: str | Path, out: str | Path,
               tokenizer: str | Path | None = None) -> Path:
    """A ``depthattn train`` run directory (its ``model/``, else its newest checkpoint) →
    a Hugging Face folder loadable with ``AutoModelForCausalLM.from_pretrained(out)``. The run's
    tokenizer is included when found (or given); otherwise a warning says so."""
    model = load_pretrained_any(run_dir)
    try:
        tok = load_tokenizer_for(run_dir, tokenizer)
    except FileNotFoundError as error:
        if tokenizer is not None:
            raise
        logger.warning("exporting without a tokenizer: %s", error)
        tok = None
    return save_hf(model, out, tok)
