from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from depthattn.data import IGNORE_INDEX, TokenStream, TrainBatches, ValidationBatches


@pytest.fixture(scope="module")
def train(prepared):
    return TokenStream(prepared, "train")


@pytest.fixture(scope="module")
def val(prepared):
    return TokenStream(prepared, "validation")


def test_stream_read_crosses_shard_boundaries(train):
    assert len(train.shards) > 1
    whole = np.concatenate([np.asarray(s) for s in train.shards]).astype(np.int64)
    edge = int(train.offsets[1])
    assert np.array_equal(train.read(edge - 5, 10), whole[edge - 5:edge + 5])
    assert np.array_equal(train.read(0, train.num_tokens), whole)
    with pytest.raises(IndexError, match="outside the train split"):
        train.read(train.num_tokens - 3, 4)


def test_batches_are_windows_shifted_by_one(train):
    inputs, targets = TrainBatches(train, seq_len=32, batch_size=4, seed=1).batch(0)
    assert inputs.shape == targets.shape == (4, 32) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    loader = TrainBatches(train, seq_len=32, batch_size=4, seed=1)
    for row, start in enumerate(loader.window_starts(0)):
        assert np.array_equal(inputs[row].numpy(), train.read(int(start), 32))


def test_same_seed_and_step_give_the_same_batch(train):
    a = TrainBatches(train, seq_len=16, batch_size=3, seed=7)
    b = TrainBatches(train, seq_len=16, batch_size=3, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.batch(5), b.batch(5), strict=True))
    assert not torch.equal(a.batch(5)[0], a.batch(6)[0])
    assert not torch.equal(a.batch(5)[0], TrainBatches(train, 16, 3, seed=8).batch(5)[0])


def test_resumed_iteration_continues_the_fresh_one(train):
    loader = TrainBatches(train, seq_len=16, batch_size=2, seed=3)
    fresh = list(itertools.islice(iter(loader), 10))
    resumed = list(itertools.islice(TrainBatches(train, 16, 2, seed=3).iterate(start_step=6), 4))
    for (x, y), (u, v) in zip(fresh[6:], resumed, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)


def test_ranks_split_the_global_batch(train):
    single = TrainBatches(train, seq_len=16, batch_size=6, seed=2)
    ranks = [TrainBatches(train, seq_len=16, batch_size=2, seed=2, rank=r, world_size=3)
             for r in range(3)]
    for step in (0, 9):
        joined = torch.cat([r.batch(step)[0] for r in ranks])
        assert torch.equal(joined, single.batch(step)[0])


@pytest.mark.parametrize("seq_len, batch_size, world_size", [(16, 4, 1), (7, 3, 1), (16, 3, 2),
                                                              (5, 2, 3)])
def test_validation_predicts_every_token_exactly_once(val, seq_len, batch_size, world_size):
    tokens = val.read(0, val.num_tokens)
    predicted = np.full(val.num_tokens, -1, dtype=np.int64)  # predicted[i]: target for token i
    times = np.zeros(val.num_tokens, dtype=np.int64)
    lengths = set()
    for rank in range(world_size):
        batches = ValidationBatches(val, seq_len, batch_size, rank=rank, world_size=world_size)
        lengths.add(len(batches))
        rows = [row for inputs, targets in batches for row in zip(inputs, targets, strict=True)]
        for k, (x, y) in enumerate(rows):
            assert x.shape == y.shape == (seq_len,)
            window = rank + k * world_size  # documented round-robin order
            keep = (y != IGNORE_INDEX).numpy()
            start = window * seq_len
            n = int(keep.sum())
            assert keep[:n].all() and not keep[n:].any()  # padding only at the end
            if n:
                assert np.array_equal(x[:n].numpy(), tokens[start:start + n])
                predicted[start + 1:start + 1 + n] = y[:n].numpy()
                times[start + 1:start + 1 + n] += 1
    assert len(lengths) == 1  # every rank yields the same number of batches
    assert times[0] == 0 and (times[1:] == 1).all()
    assert np.array_equal(predicted[1:], tokens[1:])
    totals = ValidationBatches(val, seq_len, batch_size, world_size=world_size)
    assert totals.num_target_tokens == val.num_tokens - 1
    assert sum(ValidationBatches(val, seq_len, batch_size, rank=r, world_size=world_size)
               .rank_target_tokens for r in range(world_size)) == val.num_tokens - 1


def test_validation_max_windows(val):
    batches = ValidationBatches(val, seq_len=8, batch_size=4, max_windows=3)
    assert batches.num_target_tokens == 24 and len(batches) == 1


@pytest.mark.parametrize("kwargs, error, message", [
    ({"seq_len": 0}, ValueError, "seq_len must be at least 1, got 0"),
    ({"seq_len": 128, "max_seq_len": 64}, ValueError,
     "seq_len 128 is larger than the model allows \\(max_seq_len 64\\)"),
    ({"batch_size": 0}, ValueError, "batch_size must be at least 1, got 0"),
    ({"rank": 2, "world_size": 2}, ValueError, "need 0 <= rank < world_size, got rank 2"),
    ({"seed": -1}, ValueError, "seed must be non-negative"),
])
def test_bad_loader_arguments(train, kwargs, error, message):
    args = {"seq_len": 16, "batch_size": 2, **kwargs}
    with pytest.raises(error, match=message):
        TrainBatches(train, **args)


def test_seq_len_larger_than_the_split(val):
    n = val.num_tokens
    with pytest.raises(ValueError, match=f"seq_len {n} needs windows of {n + 1} tokens, but the "
                                         f"validation split has only {n}; the largest seq_len "
                                         f"it allows is {n - 1}"):
        TrainBatches(val, seq_len=n, batch_size=1)
    # validation may use one short, padded window instead
    batches = ValidationBatches(val, seq_len=n + 10, batch_size=1)
    assert len(batches) == 1 and batches.num_target_tokens == n - 1
