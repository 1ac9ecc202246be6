"""Numerical kernels: plain references and their fused versions."""
