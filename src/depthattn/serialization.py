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
    state = load_file(directory / WEIGHTS_NAME, device=str(device or "cpu"))
    return _model_from_state(config, state, device, dtype)


def _model_from_state(config: ModelConfig, state: dict[str, torch.Tensor], device,
                      dtype: torch.dtype | None) -> CausalLM:
    """Build on the meta device (no wasted initialisation) and take the tensors as they are."""
    if config.tie_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    with torch.device("meta"):
        model = CausalLM(config)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    rope = model.model.rotary_emb  # a non-persistent buffer: recompute it on the real device
    rope.inv_freq = torch.empty_like(rope.inv_freq, device=device or "cpu")
    rope.reset_parameters()
    return model.to(dtype=dtype) if dtype is not None else model


def load_qwen3_folder(directory: str | Path, method: str = "vanilla", device=None,
                      dtype: torch.dtype | None = None, **method_options) -> CausalLM:
    """A Hugging Face Qwen3 checkpoint folder (config.json + model.safetensors, or sharded with
    model.safetensors.index.json) as a depthattn model, any method: no weight changes."""
    from transformers import AutoConfig

    directory = Path(directory)
    hf_config = AutoConfig.from_pretrained(directory)
    if hf_config.model_type != "qwen3":
        raise ValueError(f"{directory} holds a {hf_config.model_type!r} model; allowed: 'qwen3'")
    config = ModelConfig.from_qwen3(hf_config, method=method, **method_options)
    index = directory / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
             if index.is_file() else [WEIGHTS_NAME])
    state = {}
    for name in files:
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} does not exist")
        state.update(load_file(directory / name, device=str(device or "cpu")))
    return _model_from_state(config, state, device, dtype)


def load_any(path: str | Path, device=None, dtype: torch.dtype | None = None) -> CausalLM:
    """A depthattn model folder, a training run directory (its final model, else its newest
    checkpoint) or a Qwen3 Hugging Face folder."""
    path = Path(path)
    if (path / "model" / CONFIG_NAME).is_file():
        return load_model(path / "model", device, dtype)
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        return load_model(path / "checkpoints" / latest.read_text().strip(), device, dtype)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is neither a run directory, a depthattn model folder "
                                f"nor a Hugging Face folder (no {CONFIG_NAME})")
    fields = json.loads(config_file.read_text())
    if fields.get("format") == "depthattn":
        return load_model(path, device, dtype)
    if fields.get("model_type") == "depthattn":  # a Hugging Face folder (save_pretrained)
        from depthattn.hf.export import load_pretrained_any

        return load_pretrained_any(path, device, dtype).core()
    return load_qwen3_folder(path, device=device, dtype=dtype)
