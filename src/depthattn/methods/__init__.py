"""Cross-layer methods, one file each, registered by name (see base.py for the plug-in points):
Depth-Attention and value residual here, the hidden-state baselines in ``baselines/``."""

# Importing the method modules registers them.
from depthattn.methods import depth_attention, value_residual, vanilla  # noqa: F401
from depthattn.methods.base import CrossLayerMethod, MethodCost, MethodOptions
from depthattn.methods.baselines import (  # noqa: F401
    attnres,
    block_attnres,
    denseformer,
    hyper_connections,
    mhc,
    muddformer,
)
from depthattn.methods.depth_attention import set_depth_mix_impl
from depthattn.methods.registry import (
    build_method,
    get_method,
    method_names,
    method_options,
    register,
    resolve_config,
)

__all__ = ["CrossLayerMethod", "MethodCost", "MethodOptions", "build_method", "get_method",
           "method_names", "method_options", "register", "resolve_config", "set_depth_mix_impl"]
