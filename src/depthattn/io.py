"""Model folders: save and load ours, read any folder a model can come from.

- ``save_model`` / ``load_model``: ``config.json`` (``"format": "depthattn"`` + ModelConfig) and
  ``model.safetensors``, each written atomically (a temporary name, then a rename), weights
  first, config last, so a folder with a config is complete.
- ``load_any``: whatever directory this is (``folder_kind``): a training run (its final model,
  else its newest checkpoint), one of our model folders, a Hugging Face folder of our model
  (``save_pretrained``: the same parameter names, its config.json holds the ModelConfig
  fields) or a Qwen3 Hugging Face folder, as a core ``CausalLM``.
- ``read_safetensors``: ``model.safetensors`` or the shards its index names.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from depthattn.model.config import ModelConfig
from depthattn.model.decoder import CausalLM
from depthattn.train.run_dir import RunDir
from depthattn.utils.atomic import atomic_write, write_text_atomic

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
HF_MODEL_TYPE = "depthattn"  # the model_type of our Hugging Face config

FolderKind = Literal["run", "depthattn", "hf", "qwen3"]


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
        raise ValueError(f"{config} is not valid JSON: {error}") from None


def read_safetensors(directory: str | Path,
                     device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
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
        state.update(load_file(directory / name, device=str(device or "cpu")))
    return state


def model_from_state(config: ModelConfig, state: dict[str, torch.Tensor],
                     device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> CausalLM:
    """Build on the meta device (no wasted initialisation) and take the tensors as they are
    (strict: every key must match)."""
    if config.tie_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    with torch.device("meta"):
        model = CausalLM(config)
    adapter = "model.loop_injection.weight"
    if adapter in model.state_dict() and adapter not in state:
        raise ValueError(f"the checkpoint has no {adapter}: its config asks for "
                         f"loop_injection='concat' (the Linear(2D -> D) adapter), but its "
                         f"weights were not trained with one; load it with the loop_injection "
                         f"it was trained with")
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    rope = model.model.rotary_emb  # a non-persistent buffer: recompute it on the real device
    rope.inv_freq = torch.empty_like(rope.inv_freq, device=device or "cpu")
    rope.reset_parameters()
    return model.to(dtype=dtype) if dtype is not None else model


def load_model(directory: str | Path, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> CausalLM:
    """Load a directory written by ``save_model`` (strict: every key must match), or a
    distributed training checkpoint (``depthattn.train.sharded_checkpoint``)."""
    directory = Path(directory)
    if is_sharded(directory):
        return load_sharded_model(directory, device, dtype)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} does not exist; a depthattn model "
                                    f"directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    fields = json.loads((directory / CONFIG_NAME).read_text())
    fields.pop("format", None)
    config = ModelConfig.from_dict(fields)
    return model_from_state(config, read_safetensors(directory, device), device, dtype)


SHARDS_DIR = "dcp"  # a distributed training checkpoint's DCP folder (train.sharded_checkpoint)


def is_sharded(path: str | Path) -> bool:
    """A checkpoint written through torch.distributed.checkpoint (a distributed run's)."""
    return (Path(path) / SHARDS_DIR / ".metadata").is_file()


def load_sharded_model(path: str | Path, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> CausalLM:
    """The model of a distributed (DCP) checkpoint, whole, in one plain process; ``load_model``
    comes here for such a folder, so every command that reads a run reads these too."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    if not is_sharded(path):
        raise ValueError(f"{path} is not a distributed checkpoint (no {SHARDS_DIR}/.metadata)")
    fields = read_config_json(path)
    fields.pop("format", None)
    config = ModelConfig.from_dict(fields)
    with torch.device("meta"):
        skeleton = CausalLM(config)
    state = {k: torch.empty_like(v, device="cpu") for k, v in skeleton.state_dict().items()}
    dcp.load({"model": state}, checkpoint_id=str(path / SHARDS_DIR), no_dist=True)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    model = model_from_state(config, state)
    return model.to(device=device, dtype=dtype) if (device or dtype) else model


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
    return model_from_state(config, read_safetensors(directory, device), device, dtype)


def folder_kind(path: str | Path) -> FolderKind:
    """What kind of model directory ``path`` is; FileNotFoundError when none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    run = RunDir(path)
    if run.model_path() is not None:
        return "run"
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path} is neither a run directory, a depthattn model folder "
                                f"nor a Hugging Face folder (no {CONFIG_NAME})")
    fields = json.loads((path / CONFIG_NAME).read_text())
    if fields.get("format") == "depthattn":
        return "depthattn"
    if fields.get("model_type") == HF_MODEL_TYPE:
        return "hf"
    return "qwen3"


def model_config_from_hf_fields(fields: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of our Hugging Face config.json (it holds every ModelConfig field)."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig.from_dict({k: v for k, v in fields.items() if k in names})


def load_any(path: str | Path, device=None, dtype: torch.dtype | None = None) -> CausalLM:
    """A training run directory (its final model, else its newest checkpoint), a depthattn
    model folder, a Hugging Face folder of our model or a Qwen3 Hugging Face folder."""
    path = Path(path)
    kind = folder_kind(path)
    if kind == "run":
        return load_model(RunDir(path).model_path(), device, dtype)
    if kind == "depthattn":
        return load_model(path, device, dtype)
    if kind == "hf":
        config = model_config_from_hf_fields(read_config_json(path))
        return model_from_state(config, read_safetensors(path, device), device, dtype)
    return load_qwen3_folder(path, device=device, dtype=dtype)
