"""The unstacked depth mix through ``torch.compile``: Inductor fuses the scores, the softmax and
the weighted sum into one kernel per pass (C++ on CPU, Triton on CUDA). Compiled on first use
and again for new shapes (``dynamic=None`` lets it generalise after the first recompile)."""

from __future__ import annotations

import torch

from depthattn.ops.depth_mix.unstacked import depth_mix_unstacked

depth_mix_compiled = torch.compile(depth_mix_unstacked, dynamic=None, fullgraph=True)
