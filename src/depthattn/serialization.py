"""Save and load a model as a directory: ``config.json`` + ``model.safetensors``.

Writes are atomic: each file is written under a temporary name in the same directory and
renamed into place, so an interrupted save never leaves a half-written file that looks done.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from depthattn.config import ModelConfig
from depthattn.model.transformer import CausalLM

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: CausalLM, directory: str | Path) -> Path:
    """Write ``model`` to ``directory`` (created if needed); weights first, config last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # shared with model.embed_tokens.weight
    _atomic_write(directory / WEIGHTS_NAME,
                  lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    config = json.dumps({"format": "depthattn", **model.config.to_dict()}, indent=2) + "\n"
    _atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(config))
    return directory


def load_model(directory: str | Path, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> CausalLM:
    """Load a directory written by ``save_model`` (strict: every key must match)."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} does not exist; a depthattn model "
                                    f"directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    fields = json.loads((directory / CONFIG_NAME).read_text())
    fields.pop("format", None)
    config = ModelConfig.from_dict(fields)
    with torch.device("meta"):
        model = CausalLM(config)
    state = load_file(directory / WEIGHTS_NAME, device=str(device or "cpu"))
    if config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.inv_freq = torch.empty_like(model.model.rotary_emb.inv_freq,
                                                       device=device or "cpu")
    model.model.rotary_emb.reset_parameters()
    return model.to(dtype=dtype) if dtype is not None else model
