"""Cross-layer methods, one file each, registered by name (see base.py for the plug-in points)."""

# Importing the method modules registers them.
from depthattn.crosslayer import (  # noqa: F401
    attnres,
    block_attnres,
    denseformer,
    depth_attention,
    hyper_connections,
    mhc,
    muddformer,
    value_residual,
    vanilla,
)
from depthattn.crosslayer.base import CrossLayerMethod, MethodCost, MethodOptions
from depthattn.crosslayer.registry import (
    build_method,
    get_method,
    method_names,
    register,
)

__all__ = ["CrossLayerMethod", "MethodCost", "MethodOptions", "build_method", "get_method", "method_names",
           "register"]
