"""A tiny prepared corpus and a tiny training config shared by the training tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from depthattn.train import TrainConfig, train
from depthattn.train.checkpoint import checkpoint_name
from depthattn.train.run_dir import RunDir

WORDS = ("the of and to in that is was he for it with as his on be at by had not are but from "
         "or have an they which one you were her all she there would their we him been has when "
         "who will more no if out so said what up its about into than them can only other new").split()


@pytest.fixture(scope="session")
def prepared_corpus(tmp_path_factory):
    from depthattn.data import prepare

    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    docs = ["\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + "."
                      for _ in range(60)) for _ in range(30)]
    (root / "corpus.txt").write_text("\n\n\n".join(docs))
    return prepare(root / "corpus.txt", out_dir=root / "prepared", vocab_size=300,
                   num_workers=1, progress=False)


@pytest.fixture
def tiny_train_config(prepared_corpus, tmp_path):
    def make(**fields) -> TrainConfig:
        base = dict(run_dir=str(tmp_path / "run"), data=str(prepared_corpus.parent),
                    model_overrides=dict(hidden_size=32, intermediate_size=64, num_layers=4,
                                         num_heads=4, num_kv_heads=2, head_dim=8),
                    method="depth_attention", seq_len=32, micro_batch_size=4, steps=20, lr=5e-3,
                    log_every=1, eval_every=10, eval_windows=4, checkpoint_every=10,
                    progress=False, tensorboard=False)
        return TrainConfig(**{**base, **fields})

    return make


def as_overrides(config: TrainConfig) -> list[str]:
    """``config`` as the key=value arguments of `depthattn train`."""
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}"
            for k, v in config.to_dict().items()]


@pytest.fixture
def run_with_two_checkpoints(tiny_train_config):
    result = train(tiny_train_config(steps=20, checkpoint_every=10, eval_every=0))
    run = RunDir(result.run_dir)
    assert [p.name for p in run.checkpoints()] == [checkpoint_name(20), checkpoint_name(10)]
    return run


def flip_a_byte(path: Path, offset: int = -9) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
