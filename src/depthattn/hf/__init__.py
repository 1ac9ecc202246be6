"""The Hugging Face layer: ``DepthAttnConfig`` and ``DepthAttnForCausalLM`` over the core modules,
registered with the Auto classes so that ``from_pretrained(dir)`` needs no ``trust_remote_code``.

Importing it is cheap: the classes load on first use, the Auto registration when transformers'
Auto modules are imported (``depthattn.hf.auto``).
"""

from __future__ import annotations

from typing import Any

from depthattn.hf.auto import install as _install_auto_registration
from depthattn.hf.auto import register_auto_classes

_install_auto_registration()

_LAZY = {
    "DepthAttnCache": "depthattn.hf.cache",
    "DepthAttnConfig": "depthattn.hf.configuration",
    "DepthAttnForCausalLM": "depthattn.hf.modeling",
    "DepthAttnForQuestionAnswering": "depthattn.hf.modeling",
    "DepthAttnForSequenceClassification": "depthattn.hf.modeling",
    "DepthAttnForTokenClassification": "depthattn.hf.modeling",
    "DepthAttnModel": "depthattn.hf.modeling",
    "DepthAttnStaticCache": "depthattn.hf.cache",
    "DepthAttnPreTrainedModel": "depthattn.hf.modeling",
    "export_run": "depthattn.hf.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'depthattn.hf' has no attribute {name!r}")


__all__ = ["DepthAttnCache", "DepthAttnConfig", "DepthAttnForCausalLM",
           "DepthAttnForQuestionAnswering", "DepthAttnForSequenceClassification",
           "DepthAttnForTokenClassification", "DepthAttnModel", "DepthAttnPreTrainedModel",
           "DepthAttnStaticCache", "export_run", "register_auto_classes"]
