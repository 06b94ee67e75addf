"""Guards of a sampling job: one writer per output, nothing unfinished left by a refusal, and a stop
at the first non-finite sampler step (used by `gdm.sampling` and the upsampler's stage 2)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import torch

from gdm.errors import GdmError
from gdm.io import make_dir
from gdm.locks import exclusive, sweep_stale


class OutputClaim:
    """One job per sample output, and nothing unfinished left by a refusal.

    `claim()` (rank 0, once every input check passed) creates the output directory, takes an exclusive
    lock on `<out>/.<name>.lock` (a second `gdm sample` on the same output is refused, not corrupted) and
    sweeps half-written final files of a killed run. Leaving the block on a `GdmError` (e.g. NaN at some
    step) in a single process: a chunk directory without finished chunks, the lock and an output directory
    this job created and left empty are removed; only a job that holds the claim cleans up (a job refused
    by the lock touches nothing). Under torchrun the chunks stay for the next run to reuse."""

    def __init__(self, out_dir: Path, name: str, world) -> None:
        self.out_dir, self.name, self.world = out_dir, name, world
        self.chunk_dir = out_dir / f".{name}.chunks"
        self.created = world.is_main and not out_dir.exists()
        self.stack = contextlib.ExitStack()
        self.owner = False

    def claim(self) -> None:
        make_dir(self.out_dir, "sample output directory")  # every check passed: outputs may be written now
        self.stack.enter_context(exclusive(self.out_dir / f".{self.name}.lock",
                                           f"sample output {self.out_dir / self.name}.npz"))
        self.owner = True
        sweep_stale(self.out_dir, f"{self.name}.")  # a half-written final npz/json/png of a killed run

    def __enter__(self) -> OutputClaim:  # noqa: PYI034 (python 3.10 has no typing.Self)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None and isinstance(exc, GdmError) and self.owner and self.world.size == 1:
            if not any(self.chunk_dir.glob("[0-9]*.npz")):
                shutil.rmtree(self.chunk_dir, ignore_errors=True)
            self.stack.close()  # the lock file goes too
            if self.created and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
                self.out_dir.rmdir()
        self.stack.close()


class FiniteWatch:
    """Wraps a model function and records, per step and per sample, whether its output was finite
    (on the device: no synchronisation per step). `check` then stops the run on the first step that
    produced NaN/inf, naming the step and the sample indices, before anything is written."""

    def __init__(self, model_fn):
        self.model_fn = model_fn
        self.finite: list[torch.Tensor] = []
        self.t: list[torch.Tensor] = []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.model_fn(x_t, t)
        self.finite.append(torch.isfinite(out).flatten(1).all(1))
        self.t.append(t.reshape(-1)[:1])
        return out

    def check(self, x: torch.Tensor, indices: np.ndarray) -> None:
        last = torch.isfinite(x).flatten(1).all(1)
        if bool(last.all()) and all(bool(f.all()) for f in self.finite):
            return
        flags = torch.stack(self.finite + [last]).cpu()
        step = int((~flags).any(1).nonzero()[0, 0])
        bad = [int(indices[i]) for i in (~flags[step]).nonzero()[:, 0].tolist()]
        n = len(self.finite)
        where = (f"step {step + 1} of {n} (model timestep t={int(self.t[step][0])})" if step < n
                 else f"the final update after step {n} (guidance gradient?)")
        raise GdmError(
            f"sampling produced NaN/inf at {where} for sample index(es) {bad[:10]}"
            f"{' ...' if len(bad) > 10 else ''}; stopped before writing them. Check the checkpoint and the "
            "guidance scale (the model or classifier may have diverged)"
        )
