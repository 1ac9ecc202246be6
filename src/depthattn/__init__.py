"""depthattn: Depth-Attention (Zeng et al., 2026, arXiv 2606.05014) — cross-layer value mixing
for decoder-only language models, with its baselines, training and evaluation."""

from depthattn.analysis.depth_weights import DepthWeights, capture_depth_weights
from depthattn.io import load_model, save_model
from depthattn.model import CausalLM, KVCache
from depthattn.model.config import PRESETS, ModelConfig
from depthattn.model.generate import generate
from depthattn.utils.errors import DepthAttnError

__version__ = "0.1.0"

__all__ = ["PRESETS", "CausalLM", "DepthAttnError", "DepthWeights", "KVCache", "ModelConfig",
           "capture_depth_weights", "generate", "load_model", "save_model"]
import depthattn.hf  # noqa: E402,F401  registers the Auto classes lazily (depthattn/hf/auto.py)
