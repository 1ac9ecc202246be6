"""Auto-class registration that costs nothing at ``import depthattn``.

Importing ``transformers.modeling_utils`` takes seconds (docs/design.md), so ``import depthattn``
must not do it: each registration runs when the Auto module it extends is imported (or at once
if it already is). After ``import depthattn``, ``AutoModelForCausalLM.from_pretrained(dir)``
works without ``trust_remote_code``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any

_PREFIX = "transformers.models.auto."
_DONE: set[str] = set()


def _register_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig

    from depthattn.hf.configuration import DepthAttnConfig

    AutoConfig.register(DepthAttnConfig.model_type, DepthAttnConfig, exist_ok=True)


def _initializing(name: str) -> bool:
    return getattr(getattr(sys.modules.get(name), "__spec__", None), "_initializing", False)


def _register_model(layers_loaded: bool = False) -> None:
    # Our models import transformers.modeling_layers, which itself imports the Auto modules.
    # While either is being imported, the one in progress registers when it is done (the hook
    # below, or the last line of depthattn.hf.modeling).
    if _initializing("depthattn.hf.modeling") or \
            (not layers_loaded and _initializing("transformers.modeling_layers")):
        return
    from depthattn.hf.modeling import register_models

    register_models()


def _register_tokenizer() -> None:
    # Our tokenizers are tokenizer.json files (fast tokenizers); a folder whose
    # tokenizer_config.json names no class resolves through the model type.
    from transformers import PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import AutoTokenizer

    from depthattn.hf.configuration import DepthAttnConfig

    AutoTokenizer.register(DepthAttnConfig, fast_tokenizer_class=PreTrainedTokenizerFast,
                           exist_ok=True)


_REGISTRATIONS = {
    _PREFIX + "configuration_auto": _register_config,
    _PREFIX + "modeling_auto": _register_model,
    _PREFIX + "tokenization_auto": _register_tokenizer,
    "transformers.modeling_layers": lambda: _register_model(layers_loaded=True),
}


# Each registration imports from the Auto module itself (fully executed when the hook runs),
# never through the `transformers` package, which may still be initialising.
def _run(module_name: str) -> None:
    if module_name not in _DONE:
        _DONE.add(module_name)
        if module_name != _PREFIX + "configuration_auto":
            _run(_PREFIX + "configuration_auto")  # the model/tokenizer keys need the config
        _REGISTRATIONS[module_name]()


def register_auto_classes() -> None:
    """Register everything now (imports transformers' Auto modules)."""
    for name in _REGISTRATIONS:
        _run(name)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        _run(module.__name__)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _REGISTRATIONS or fullname in _DONE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Register with the Auto modules already imported; hook the others' first import."""
    for name in _REGISTRATIONS:
        if name in sys.modules:
            _run(name)
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
