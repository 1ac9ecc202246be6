"""The hidden-state cross-layer baselines (docs/baselines.md): DenseFormer, hyper-connections,
mHC, attention residuals (full and block) and MUDDFormer, with their stream plumbing and
combinations with an in-attention method."""
