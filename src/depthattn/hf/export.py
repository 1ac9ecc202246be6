"""Exporting a model folder, most often a training run, to the Hugging Face format:
safetensors + config + generation config + the run's tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from depthattn.data.tokenizer import check_vocab_fits
from depthattn.hf.modeling import DepthAttnForCausalLM
from depthattn.io import load_model, load_tokenizer_for

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                   "chat_template.jinja")


def save_hf(model: DepthAttnForCausalLM, out: str | Path, tokenizer: Any = None) -> Path:
    """save_pretrained (safetensors + config.json + generation_config.json) and the tokenizer."""
    out = Path(out)
    if tokenizer is not None:
        check_vocab_fits(len(tokenizer), model.config.vocab_size)
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
    """A ``depthattn train`` run directory (its ``model/``, else its newest checkpoint), or any
    folder ``load_model`` reads → a Hugging Face folder loadable with
    ``AutoModelForCausalLM.from_pretrained(out)``. The run's tokenizer is included when found
    (or given); otherwise a warning says so."""
    model = DepthAttnForCausalLM.from_core(load_model(run_dir))
    try:
        tok = load_tokenizer_for(run_dir, tokenizer)
    except FileNotFoundError as error:
        if tokenizer is not None:
            raise
        logger.warning("exporting without a tokenizer: %s", error)
        tok = None
    return save_hf(model, out, tok)
