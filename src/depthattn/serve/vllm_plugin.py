"""vLLM's general plugin (entry point ``vllm.general_plugins``, in pyproject.toml).

vLLM loads it in every process it starts (the front end, the engine core, each worker) before it
reads a model folder. It registers our Hugging Face classes with transformers' Auto classes
(vLLM reads config.json with ``AutoConfig`` and builds ``DepthAttnModel`` with
``AutoModel.from_config``) and maps the architecture ``DepthAttnForCausalLM`` to
``depthattn.serve.vllm_model``'s class: vLLM's Transformers backend, which runs our base model
with vLLM's paged attention, continuous batching and sampling (docs/serving.md).
"""

from __future__ import annotations

ARCHITECTURE = "DepthAttnForCausalLM"
MODEL_CLASS = "depthattn.serve.vllm_model:DepthAttnForCausalLMInVllm"


def register() -> None:
    """Idempotent: vLLM calls it once per process."""
    from vllm import ModelRegistry

    from depthattn.hf import register_auto_classes

    register_auto_classes()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
