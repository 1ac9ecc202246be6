"""Batches of fixed-length windows: random for training, contiguous for validation.

Notation: B = batch size per rank, T = seq_len, N = tokens in the split. A window is T + 1
consecutive tokens; inputs are its first T, targets its last T. Training batches are a pure
function of (seed, step, rank), laid out so that the data of a step depends on the global batch
alone, not on ranks or accumulation (docs/distributed.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from depthattn.data.shards import TokenStream
from depthattn.utils.errors import DepthAttnError

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


def check_seq_len(seq_len: int, num_tokens: int, split: str, max_seq_len: int | None = None,
                  need_full_window: bool = True) -> None:
    """seq_len must be positive, within the model's limit, and fit in the split."""
    if seq_len < 1:
        raise DepthAttnError(f"seq_len must be at least 1, got {seq_len}")
    if max_seq_len is not None and seq_len > max_seq_len:
        raise DepthAttnError(f"seq_len {seq_len} is larger than the model allows "
                             f"(max_seq_len {max_seq_len})")
    if need_full_window and seq_len + 1 > num_tokens:
        raise DepthAttnError(
            f"seq_len {seq_len} needs windows of {seq_len + 1} tokens, but the {split} split has "
            f"only {num_tokens}; the largest seq_len it allows is {num_tokens - 1}")
    if num_tokens < 2:
        raise DepthAttnError(f"the {split} split has {num_tokens} token(s); at least 2 are needed")


def _check_batches(rank: int, world_size: int, batch_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DepthAttnError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if batch_size < 1:
        raise DepthAttnError(f"batch_size must be at least 1, got {batch_size}")


class TrainBatches:
    """Reproducible random windows for data-parallel training: the global batch of step s comes
    from a generator seeded with (seed, s) alone, laid out (a, world_size, b)."""

    def __init__(self, stream: TokenStream, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, max_seq_len: int | None = None,
                 accumulation: int = 1) -> None:
        check_seq_len(seq_len, stream.num_tokens, stream.split, max_seq_len)
        _check_batches(rank, world_size, batch_size)
        if accumulation < 1 or batch_size % accumulation:
            raise DepthAttnError(f"accumulation ({accumulation}) must be at least 1 and divide "
                                 f"batch_size ({batch_size}): the rows of one rank's step")
        self.accumulation = accumulation
        if seed < 0:
            raise DepthAttnError(f"seed must be non-negative, got {seed}")
        self.stream, self.seq_len, self.batch_size = stream, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def window_starts(self, step: int) -> np.ndarray:
        """Start offsets of this rank's B windows at `step`."""
        if step < 0:
            raise DepthAttnError(f"step must be non-negative, got {step}")
        rng = np.random.default_rng([self.seed, step])
        last_start = self.stream.num_tokens - (self.seq_len + 1)
        starts = rng.integers(0, last_start + 1, size=self.batch_size * self.world_size)
        layout = starts.reshape(self.accumulation, self.world_size, -1)  # (a, N, b)
        return layout[:, self.rank].reshape(-1)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (B, T) int64, for training step `step`."""
        windows = np.stack([self.stream.read(int(s), self.seq_len + 1)
                            for s in self.window_starts(step)])  # (B, T + 1)
        windows = torch.from_numpy(windows)
        return windows[:, :-1], windows[:, 1:]

    def iterate(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of steps start_step, start_step + 1, ... (endless)."""
        step = start_step
        while True:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(0)


class ValidationBatches:
    """Every held-out token predicted exactly once: window w has inputs [wT, wT + T) and targets
    [wT + 1, wT + T + 1); a short last window is padded (EOS / IGNORE_INDEX). Windows go to
    ranks round-robin, padded with ignored ones, so all ranks yield as many (B, T) batches."""

    def __init__(self, stream: TokenStream, seq_len: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, max_windows: int | None = None,
                 max_seq_len: int | None = None) -> None:
        check_seq_len(seq_len, stream.num_tokens, stream.split, max_seq_len,
                      need_full_window=False)
        _check_batches(rank, world_size, batch_size)
        if max_windows is not None and max_windows < 1:
            raise DepthAttnError(f"max_windows must be at least 1, got {max_windows}")
        self.stream, self.seq_len, self.batch_size = stream, seq_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.num_windows = math.ceil((stream.num_tokens - 1) / seq_len)
        if max_windows is not None:
            self.num_windows = min(self.num_windows, max_windows)
        self.windows_per_rank = math.ceil(self.num_windows / world_size)

    def _num_targets(self, window: int) -> int:
        if window >= self.num_windows:
            return 0
        return min(self.seq_len, self.stream.num_tokens - 1 - window * self.seq_len)

    @property
    def num_target_tokens(self) -> int:
        """Tokens predicted over all ranks (N - 1 without max_windows)."""
        return sum(self._num_targets(w) for w in range(self.num_windows))

    @property
    def rank_target_tokens(self) -> int:
        """Tokens predicted by this rank's batches."""
        return sum(self._num_targets(w) for w in self._rank_windows())

    def _rank_windows(self) -> range:
        return range(self.rank, self.windows_per_rank * self.world_size, self.world_size)

    def __len__(self) -> int:
        return math.ceil(self.windows_per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Pad the last batch with filler windows (index past the end: nothing to predict).
        windows = list(self._rank_windows())
        windows += [self.num_windows] * (len(self) * self.batch_size - len(windows))
        for first in range(0, len(windows), self.batch_size):
            chunk = windows[first:first + self.batch_size]
            inputs = np.full((self.batch_size, self.seq_len), self.stream.eos_token_id,
                             dtype=np.int64)
            targets = np.full((self.batch_size, self.seq_len), IGNORE_INDEX, dtype=np.int64)
            for row, w in enumerate(chunk):
                n = self._num_targets(w)
                if n:
                    tokens = self.stream.read(w * self.seq_len, n + 1)
                    inputs[row, :n] = tokens[:-1]
                    targets[row, :n] = tokens[1:]
            yield torch.from_numpy(inputs), torch.from_numpy(targets)
