"""The step's generators: the noise, timesteps and dropout of step k are functions of (seed, k).

That makes resume exact with nothing to restore but the step. Which rows form step k's batch (and
their flips) is the data reader's business: `gdm.data.order` / `gdm.data.reader.StepReader`, also
a pure function of (seed, k), and rank-aware (rank r reads `gdm.data.order.rank_slice(B, r, W)`).

The per-example draws of a step (timestep t, noise eps, the classifier's t) come from one
generator per POSITION of the global batch, seeded by (seed, k, position): row j of step k gets
the same t and eps whichever rank or micro-batch computes it, so N data-parallel ranks, each
taking its contiguous slice of the positions, compute exactly the examples one process computes.
"""

from __future__ import annotations

import torch

from gdm.diffusion.noise import sample_seed


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, step))


def position_generators(seed: int, step: int, positions: range) -> list[torch.Generator]:
    """One CPU generator per position of step `step`'s global batch (seeded by (seed, step, j))."""
    base = sample_seed(seed, step)
    return [torch.Generator().manual_seed(sample_seed(base, j)) for j in positions]


def position_noise(gens: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """[len(gens), *shape] standard normal rows, row j from gens[j] (drawn after its timestep)."""
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """Seed of torch's global generator for step `step`'s dropout masks on `rank`.

    torch draws dropout masks per call, not per example, so they depend on how the batch is split:
    with unet.dropout > 0 an N-rank run is a statistically equivalent run, not the same bits.
    """
    base = sample_seed(seed + 1, step)
    return base if rank == 0 else sample_seed(base, rank)
