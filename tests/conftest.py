"""Shared tiny configurations and weight randomisation for the test suite.

Every model here is small enough that a full forward takes milliseconds on CPU. Weights are
randomised from an explicit seed (never the global RNG) so the suite is deterministic, and
*every* parameter is randomised, norm gains included: with all gains at 1 a bug that swaps
q_norm and k_norm, or drops a gain, would go unnoticed.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Without a GPU, Triton kernels run through Triton's interpreter (NumPy on CPU tensors). The
# flag is read when triton itself is imported, so it is set before anything imports it.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The models are tiny: intra-op threads only add synchronisation (and, on a busy 2-core
# machine, oversubscription that makes the suite several times slower).
torch.set_num_threads(1)

# vocab 128, hidden 64, 4 query heads of dim 16, 2 kv heads (G = 2), 6 layers.
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_layers=6,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    max_seq_len=64,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
)


def tiny_config(**overrides):
    from depthattn import ModelConfig

    return ModelConfig(**{**TINY, **overrides})


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int, std: float = 0.08) -> torch.nn.Module:
    """Overwrite every parameter: matrices ~ N(0, std²), vectors (norm gains) ~ U(0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.ndim == 1:
            new = torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.5
        else:
            new = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std
        p.copy_(new.to(p.dtype))
    return model


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A CausalLM with the TINY geometry (overridable) and seeded random weights."""
    from depthattn import CausalLM

    torch.manual_seed(seed)
    model = CausalLM(tiny_config(**overrides))
    randomize_(model, seed)
    return model.to(dtype).eval()


def random_ids(batch: int, length: int, vocab: int = TINY["vocab_size"], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen)


@pytest.fixture
def make_config():
    return tiny_config


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def make_ids():
    return random_ids


@pytest.fixture
def randomize():
    return randomize_
