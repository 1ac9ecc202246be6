"""What the test folders share: tiny configurations, weight randomisation and a synthetic corpus.

Every model here is small enough that a full forward takes milliseconds on CPU. Weights are
randomised from an explicit seed (never the global RNG) so the suite is deterministic, and
*every* parameter is randomised, norm gains included: with all gains at 1 a bug that swaps
q_norm and k_norm, or drops a gain, would go unnoticed.

The corpus (``write_corpus``, the ``corpus_dir`` fixture) serves the data, CLI and evaluation
tests. Documents are built from a fixed word list with an explicit seed, so every test sees the
same text; they contain no trailing spaces or runs of blank lines, so cleaning leaves them
unchanged and `decode(shard)` can be compared with the files byte for byte.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Without a GPU, Triton kernels run through Triton's interpreter (NumPy on CPU tensors). The
# flag is read when triton itself is imported, so it is set before anything imports it.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Property tests (hypothesis): no example database written into the checkout, no per-example
# deadline (a first call compiles or imports; timing on a busy CI machine varies).
settings.register_profile("depthattn", database=None, deadline=None, derandomize=False)
settings.load_profile("depthattn")

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
# Overrides of TINY for multi-head latent attention (docs/method.md §9), the "mla-tiny" preset
# shrunk to TINY's width: d_c 32, d_nope 16, d_rope 8 (keys 24 wide), d_v 20, H = H_kv = 4.
TINY_MLA = {"attention": "mla", "num_kv_heads": 4, "head_dim": None, "kv_lora_rank": 32,
            "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 20}


def tiny_config(**overrides):
    """The TINY geometry (overridable), its method's options resolved as a model holds them."""
    from depthattn import ModelConfig
    from depthattn.methods import resolve_config

    return resolve_config(ModelConfig(**{**TINY, **overrides}))


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int, std: float = 0.08) -> torch.nn.Module:
    """Overwrite every parameter: matrices and single numbers (a method's gates) ~ N(0, std²),
    vectors (norm gains) ~ U(0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.ndim == 1 and p.numel() > 1:
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


WORDS = ("the king queen lord lady good night day heart love death blood sword crown fair "
         "sweet noble gentle speak hear come go stay fly thou thee thy my our your his her "
         "what why where when how now then here there heaven earth sea fire air honour grace "
         "Hamlet Romeo Juliet Milton Paradise garden serpent angel tempest island storm ship "
         "é ö — “quoted” it's o'er 'tis").split()


def make_text(seed: int, n_words: int = 400) -> str:
    """Verse-like lines of 5-9 words, blank line every few lines."""
    rng = random.Random(seed)
    lines, words = [], 0
    while words < n_words:
        k = rng.randint(5, 9)
        line = " ".join(rng.choice(WORDS) for _ in range(k))
        lines.append(line[0].upper() + line[1:] + rng.choice([",", ".", ";", "!", "?"]))
        words += k
        if rng.random() < 0.2:
            lines.append("")
    return "\n".join(lines).strip()


def write_corpus(folder: Path, n_docs: int = 12, n_words: int = 400, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for i in range(n_docs):
        text = make_text(seed * 1000 + i, n_words)
        (folder / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
        texts.append(text)
    return texts


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "corpus")
    return tmp_path / "corpus"


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
