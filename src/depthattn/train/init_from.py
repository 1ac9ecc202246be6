"""``init_from``: start training from existing weights instead of a random initialisation
(continued pretraining, and the retrofit path: a Qwen3 checkpoint, or one in the authors'
format, continued as Depth-Attention).

The source is any folder ``depthattn.io.load_model`` reads: a training run (its final model),
a checkpoint, a depthattn model folder, a Hugging Face folder of our model, a Qwen3 Hugging Face
folder or a checkpoint in the authors' format. Its geometry must be
the configured one; the method may differ, since Depth-Attention and value residual add no
parameters. Parameters the source lacks are allowed only where the configured method or the
looped model's adapter adds them (``model.cross_layer.*``, ``model.loop_injection.*``): they keep
their fresh initialisation, and the log names how many.
"""

from __future__ import annotations

import logging

import torch

from depthattn.io import load_model
from depthattn.model.decoder import CausalLM
from depthattn.utils.errors import DepthAttnError

log = logging.getLogger(__name__)

# Fields that decide the shape of a weight, or what a weight means.
GEOMETRY_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                   "num_kv_heads", "head_dim", "tie_embeddings", "prelude_layers",
                   "loop_layers")
ADDED_BY_METHOD = ("model.cross_layer.", "model.loop_injection.")


def check_geometry(source: str, theirs, ours) -> None:
    """Raise naming every geometry field in which the source differs from the run's model."""
    differences = [f"{name} {getattr(theirs, name)!r} (this run: {getattr(ours, name)!r})"
                   for name in GEOMETRY_FIELDS if getattr(theirs, name) != getattr(ours, name)]
    if differences:
        hint = (" The vocabulary comes from the run's tokenizer: prepare the data with the "
                "source model's tokenizer." if any(d.startswith("vocab_size") for d in
                                                   differences) else "")
        raise DepthAttnError(f"init_from {source} has another geometry than this run's model: "
                         f"{'; '.join(differences)}.{hint}")


@torch.no_grad()
def initialise_from(model: CausalLM, source: str) -> None:
    """Copy the weights of the model folder ``source`` into ``model`` (before it is sharded or
    trained)."""
    loaded = load_model(source)
    check_geometry(source, loaded.config, model.config)
    theirs, ours = loaded.state_dict(), model.state_dict()
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    not_added = [k for k in missing if not k.startswith(ADDED_BY_METHOD)]
    if not_added or unexpected:
        parts = []
        if not_added:
            parts.append(f"missing {', '.join(not_added[:4])}")
        if unexpected:
            parts.append(f"not in this model: {', '.join(unexpected[:4])} (method "
                         f"{loaded.config.method!r} has parameters {model.config.method!r} "
                         f"lacks)")
        raise DepthAttnError(f"init_from {source} does not fit this run's model: "
                         f"{'; '.join(parts)}")
    for name, tensor in theirs.items():
        if ours[name].shape != tensor.shape:
            raise DepthAttnError(f"init_from {source}: {name} has shape {tuple(tensor.shape)}, "
                             f"this run's model {tuple(ours[name].shape)}")
        ours[name].copy_(tensor)
    log.info("initialised from %s (method %s)%s", source, loaded.config.method,
             f"; {len(missing)} parameter tensor(s) of {model.config.method} keep their "
             f"fresh initialisation" if missing else "")


__all__ = ["GEOMETRY_FIELDS", "check_geometry", "initialise_from"]
