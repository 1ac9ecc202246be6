"""Looking inside models: depth-attention weights (and, later, cost accounting and statistics)."""

from depthattn.analysis.depth_weights import DepthWeights, capture_depth_weights

__all__ = ["DepthWeights", "capture_depth_weights"]
