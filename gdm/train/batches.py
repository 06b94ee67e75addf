"""Stateless, seeded batch order: the batch and noise of step k are functions of (seed, k).

That makes resume exact with nothing to restore but the step: epoch e uses a permutation drawn from
a generator seeded by (seed, e); step k takes slice k mod (N // B) of it (drop-last); the step's
noise, timesteps and dropout come from a generator seeded by (seed, k).
"""

from __future__ import annotations

import torch

from gdm.diffusion.noise import sample_seed


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, step))


class BatchOrder:
    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("empty training split")
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.per_epoch = max(1, n // self.batch_size)
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(sample_seed(self.seed ^ 0x5EED, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[k * self.batch_size : (k + 1) * self.batch_size]
