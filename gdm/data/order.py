"""The training order: which rows form the global batch of step k, as a pure function of (seed, step).

Rows are numbered 0..n-1 in shard order (the order `gdm prepare` writes them); a *block* is a run of
rows that is read together (a Parquet row group). Epoch e draws from one generator seeded by
(seed, e) (`epoch_generator`):

- one window (n <= window): the epoch is `randperm(n)`, a full shuffle of the split (this is the
  order `BatchOrder` gave before streaming existed, so small datasets such as digits train on the
  very same batches);
- several windows: a permutation of the blocks is drawn first; consecutive blocks in that order
  are grouped into windows of at least `window` rows; within each window, in turn, the rows (listed
  in ascending row order) are permuted by `randperm(len(window))`. A reader therefore needs only the
  blocks of one or two windows at a time: memory is bounded by the window, not by the dataset.

Step k of the run uses epoch e, slice j of it (`divmod(k, per_epoch)`, per_epoch = n // B: the
incomplete last batch of an epoch is dropped, as before). The global batch is `global_rows(k)`;
rank r of a world of size W takes the contiguous slice `rank_slice(B, r, W)` of it, so ranks read
disjoint rows and their union, in rank order, is exactly the 1-process batch.

Random horizontal flips (`data.random_flip`) come from the step's flip generator, seeded by
(seed, step) and separate from the generator of the step's timesteps and noise: `flip_mask(seed,
step, B)` is the flip of every row of the global batch, whatever the world size, and switching
flips on or off changes no other draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gdm.diffusion.noise import sample_seed

ORDER_SALT = 0x5EED  # same salt as the pre-streaming BatchOrder: digits batches are unchanged
FLIP_SALT = 0xF11B


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed ^ ORDER_SALT, epoch))


def flip_mask(seed: int, step: int, batch_size: int) -> torch.Tensor:
    """Bool [batch_size]: which rows of step `step`'s GLOBAL batch are mirrored left-right."""
    g = torch.Generator().manual_seed(sample_seed(seed ^ FLIP_SALT, step))
    return torch.rand(batch_size, generator=g) < 0.5


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """The contiguous part of a global batch that rank `rank` of `world_size` takes (sizes differ by <= 1)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if world_size > batch_size:
        raise ValueError(f"batch size {batch_size} cannot be split across {world_size} ranks (needs >= 1 row each)")
    return slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)


class StepOrder:
    """Global batch rows of every step; `block_rows[i]` is the number of rows of block i, in row order."""

    def __init__(self, block_rows: Sequence[int], batch_size: int, seed: int, window: int):
        self.block_rows = [int(b) for b in block_rows]
        self.n = sum(self.block_rows)
        if self.n < 1:
            raise ValueError("empty training split")
        if window < 1:
            raise ValueError(f"shuffle window must be >= 1 row, got {window}")
        self.batch_size = min(batch_size, self.n)
        self.seed, self.window = seed, window
        self.per_epoch = max(1, self.n // self.batch_size)
        starts = torch.tensor([0, *self.block_rows]).cumsum(0)
        self._starts = starts[:-1]
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        self._windows: list[list[int]] = []
        self._window_ends: list[int] = []

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        """All n row numbers in the order epoch `epoch` visits them."""
        if epoch == self._epoch:
            return self._perm
        g = epoch_generator(self.seed, epoch)
        if self.n <= self.window:
            perm = torch.randperm(self.n, generator=g)
            windows = [list(range(len(self.block_rows)))]
        else:
            parts = []
            windows = self._group(torch.randperm(len(self.block_rows), generator=g).tolist())
            for blocks in windows:
                rows = torch.cat([torch.arange(self._starts[b], self._starts[b] + self.block_rows[b])
                                  for b in sorted(blocks)])
                parts.append(rows[torch.randperm(len(rows), generator=g)])
            perm = torch.cat(parts)
        self._epoch, self._perm, self._windows = epoch, perm, windows
        self._window_ends = torch.tensor([sum(self.block_rows[b] for b in w) for w in windows]).cumsum(0).tolist()
        return perm

    def window_blocks(self, step: int) -> list[int]:
        """The blocks of the window(s) that step `step`'s global batch draws from (what a reader prefetches)."""
        epoch, k = divmod(step, self.per_epoch)
        self.epoch_permutation(epoch)
        lo, hi = k * self.batch_size, (k + 1) * self.batch_size
        out: list[int] = []
        start = 0
        for blocks, end in zip(self._windows, self._window_ends):
            if start < hi and lo < end:
                out += blocks
            start = end
        return out

    def _group(self, block_order: list[int]) -> list[list[int]]:
        windows, current, rows = [], [], 0
        for b in block_order:
            current.append(b)
            rows += self.block_rows[b]
            if rows >= self.window:
                windows.append(current)
                current, rows = [], 0
        if current:
            windows.append(current)
        return windows

    def global_rows(self, step: int) -> torch.Tensor:
        """Row numbers (int64) of step `step`'s global batch."""
        epoch, k = divmod(step, self.per_epoch)
        return self.epoch_permutation(epoch)[k * self.batch_size : (k + 1) * self.batch_size]

    def rows(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """This rank's rows of step `step`'s global batch."""
        return self.global_rows(step)[rank_slice(self.batch_size, rank, world_size)]
