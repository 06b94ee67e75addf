"""torch's global CPU generator, shared by every thread of a process, used in one place at a time.

Network constructors draw their initial weights from the global generator, and so does dropout in a
training forward. The Prefect thread runner runs stages as threads of one process, so two trainings
starting together interleaved their draws: measured, the concurrent demo's guidance classifier and
third UNet got different initial weights than in the sequential run, and every guided FID moved
(up to 25 %). Seeded work on the global generator therefore holds `GLOBAL_RNG`:

- `seeded(seed)`: seed, construct, and leave the global generator as it was (torch.random.fork_rng),
  with no other thread drawing in between;
- `step_rng(seed, stochastic)`: a training step that draws from it (dropout > 0) holds it for the
  whole step, seeded by the step's own seed; a step that draws nothing (`stochastic` false) neither
  seeds nor locks, so concurrent trainings without dropout run side by side.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

GLOBAL_RNG = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def step_rng(seed: int, stochastic: bool) -> Iterator[None]:
    if not stochastic:
        yield
        return
    with GLOBAL_RNG:
        torch.manual_seed(seed)
        yield


def draws_from_global_rng(model: torch.nn.Module) -> bool:
    """Whether a training forward of `model` draws random numbers (dropout with p > 0)."""
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())
