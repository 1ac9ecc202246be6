"""Loading any model folder as a ``DepthAttnForCausalLM``, finding its tokenizer, and exporting
a training run directory to the Hugging Face format (safetensors + config + generation config +
the run's tokenizer)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from depthattn.hf.modeling import DepthAttnForCausalLM
from depthattn.io import folder_kind, load_any
from depthattn.train.run_dir import find_tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                   "chat_template.jinja")


def load_pretrained_any(path: str | Path, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None) -> DepthAttnForCausalLM:
    """Any folder ``depthattn.io.load_any`` reads, as a ``DepthAttnForCausalLM``; a
    Hugging Face folder of ours through ``from_pretrained`` (keeping its generation config)."""
    if folder_kind(path) == "hf":
        model = DepthAttnForCausalLM.from_pretrained(path, dtype=dtype)
        return model.to(device) if device is not None else model
    return DepthAttnForCausalLM.from_core(load_any(path, device=device, dtype=dtype))


def load_tokenizer_for(path: str | Path, tokenizer: str | Path | None = None) -> Any:
    """The tokenizer given, else the one found for ``path``; a clear error when there is none."""
    from depthattn.data.tokenizer import load_tokenizer

    source = Path(tokenizer) if tokenizer is not None else find_tokenizer(path)
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
