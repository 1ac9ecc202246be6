"""What vLLM runs for a depthattn folder: its Transformers backend over ``DepthAttnModel``.

The backend builds our base model, swaps its linears, embeddings and norms for vLLM's, and
registers one paged-attention layer per ``layer_idx``; ``DepthAttnAttention`` calls it through
transformers' attention interface after the depth mix, so vLLM's paged KV cache stores the mixed
values ṽ, in vanilla's shape (docs/serving.md). Imported by vLLM only.
"""

from __future__ import annotations

from typing import Any

from vllm.model_executor.models.transformers import TransformersForCausalLM

from depthattn.utils.errors import DepthAttnError


class DepthAttnForCausalLMInVllm(TransformersForCausalLM):
    """vLLM's ``TransformersForCausalLM``, refusing what it cannot run exactly."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        check_servable(vllm_config.model_config.hf_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)


def check_servable(config: Any) -> None:
    """A looped model applies a layer several times per token, each application with a cache
    slot of its own; vLLM keeps one paged cache per layer, so the applications would overwrite
    each other's keys and values. An MLA model's Transformers-backend layers would page the
    expanded per-head keys and values, not the latent entries: the cache MLA (and
    Depth-Attention's latent rule) exists to keep."""
    if getattr(config, "attention", "gqa") == "mla":
        raise DepthAttnError("vLLM cannot serve a multi-head latent attention model "
                             "(attention='mla') through its Transformers backend: it would page "
                             "each layer's expanded per-head keys and values instead of the "
                             "latent entries (d_c + d_rope per token and layer); serve it with "
                             "transformers' generate or depthattn generate")
    if getattr(config, "loop_layers", 0):
        raise DepthAttnError(f"vLLM cannot serve a looped model (loop_layers="
                             f"{config.loop_layers}, loop_iterations={config.loop_iterations}): "
                             f"it keeps one paged KV cache per layer, and a looped layer runs "
                             f"{config.loop_iterations} times per token, each with its own "
                             f"cache entry; serve it with transformers' generate or "
                             f"depthattn generate")
