"""Property: a training batch is a pure function of (seed, step): the same whatever was read
before, by whichever loader object, and windows always lie inside the split."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from depthattn.data import TokenStream, TrainBatches, prepare


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    from tests.conftest import write_corpus

    root = tmp_path_factory.mktemp("loader")
    write_corpus(root / "corpus", n_docs=6, n_words=200)
    manifest = prepare(root / "corpus", out_dir=root / "prepared", vocab_size=300,
                       num_workers=1, val_fraction=0.2, seed=1, progress=False)
    return TokenStream(manifest, "train")


@given(seed=st.integers(0, 2**31), steps=st.lists(st.integers(0, 10**6), min_size=1,
                                                   max_size=6),
       seq_len=st.integers(1, 64), batch=st.integers(1, 6))
def test_batches_depend_on_seed_and_step_only(stream, seed, steps, seq_len, batch):
    one = TrainBatches(stream, seq_len, batch, seed=seed)
    other = TrainBatches(stream, seq_len, batch, seed=seed)
    first = [one.batch(s) for s in steps]  # in this order...
    for step, (inputs, targets) in reversed(list(zip(steps, first))):  # ...and in reverse
        again_inputs, again_targets = other.batch(step)
        assert torch.equal(inputs, again_inputs) and torch.equal(targets, again_targets)
        assert inputs.shape == targets.shape == (batch, seq_len)
        assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are inputs shifted by one
        starts = one.window_starts(step)
        assert ((0 <= starts) & (starts <= len(stream) - seq_len - 1)).all()


@given(seed=st.integers(0, 2**16), step=st.integers(0, 10**4))
def test_another_seed_or_step_gives_other_windows(stream, seed, step):
    base = TrainBatches(stream, 16, 4, seed=seed)
    assert not (base.window_starts(step) == TrainBatches(stream, 16, 4, seed=seed + 1)
                .window_starts(step)).all()
    assert not (base.window_starts(step) == base.window_starts(step + 1)).all()
