"""The depth mix of Depth-Attention (docs/method.md §3): a reference and a dispatcher over fused versions."""

from depthattn.ops.depth_mix.dispatch import (
    depth_mix,
    set_depth_mix_impl,
    use_depth_mix,
)
from depthattn.ops.depth_mix.reference import depth_mix_reference

__all__ = ["depth_mix", "depth_mix_reference", "set_depth_mix_impl", "use_depth_mix"]
