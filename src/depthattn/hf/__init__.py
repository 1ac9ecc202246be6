"""The Hugging Face layer: ``DepthAttnConfig`` (model_type ``depthattn``) and
``DepthAttnForCausalLM`` wrapping the core modules (its cache: ``DepthAttnCache``, a
``transformers.Cache``), registered with ``AutoConfig`` /
``AutoModelForCausalLM`` / ``AutoTokenizer`` so that ``from_pretrained(dir)`` works without
``trust_remote_code``; export of training runs (``depthattn.hf.export``).

Importing this package is cheap: the classes load on first use, and the Auto registration runs
when transformers' Auto modules are imported (``depthattn.hf.auto``).
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
    "DepthAttnPreTrainedModel": "depthattn.hf.modeling",
    "export_run": "depthattn.hf.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'depthattn.hf' has no attribute {name!r}")


__all__ = ["DepthAttnCache", "DepthAttnConfig", "DepthAttnForCausalLM", "DepthAttnPreTrainedModel",
           "export_run", "register_auto_classes"]
