"""The step's generator: the noise, timesteps and dropout of step k are functions of (seed, k).

That makes resume exact with nothing to restore but the step. Which rows form step k's batch (and
their flips) is the data reader's business: `gdm.data.order` / `gdm.data.reader.StepReader`, also
a pure function of (seed, k).
"""

from __future__ import annotations

import torch

from gdm.diffusion.noise import sample_seed


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, step))
