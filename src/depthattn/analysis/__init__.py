"""Looking inside models: depth-attention weights, cost accounting, statistics and plots."""

from depthattn.analysis.depth_weights import DepthWeights, capture_depth_weights

__all__ = ["DepthWeights", "capture_depth_weights"]
