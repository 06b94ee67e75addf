"""Samplers of training timesteps t, with importance weights w (IDDPM section 3.3).

`sample(batch_size, device, generator) -> (t, weights)`: t int64 [B], weights float32 [B] with
E[w * L_t] equal to the uniform-t expected loss (w = 1 / (T p_t)). Draws happen on the CPU with
the given CPU generator and are then moved to `device`. `sample_each(generators, device)` draws
one t per generator instead (per-example streams: a data-parallel split does not change the draws).
"""

from __future__ import annotations

import torch

from gdm.errors import CheckpointError, ConfigError


class UniformSampler:
    """t ~ Uniform{0, ..., T-1}, weights 1."""

    uses_losses = False  # `update` is a no-op: trainers need not gather losses for it

    def __init__(self, num_timesteps: int):
        self.num_timesteps = int(num_timesteps)

    def probabilities(self) -> torch.Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, device="cpu", generator: torch.Generator | None = None):
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator)
        return t.to(device), torch.ones(batch_size, dtype=torch.float32, device=device)

    def sample_each(self, generators, device="cpu"):
        t = torch.cat([torch.randint(0, self.num_timesteps, (1,), generator=g) for g in generators])
        return t.to(device), torch.ones(len(t), dtype=torch.float32, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling ignores losses (kept so both samplers share one interface)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossSecondMomentSampler:
    """p_t proportional to sqrt(E[L_t^2]) over the last `history` losses of each t (IDDPM eq. 17),
    mixed with `uniform_prob` of the uniform distribution; uniform until every t has a full
    history. State is two tensors (`loss_history` [T, history] float64, `loss_counts` [T] int64).
    """

    uses_losses = True

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        self.num_timesteps = int(num_timesteps)
        self.history = int(history)
        self.uniform_prob = float(uniform_prob)
        self.loss_history = torch.zeros(self.num_timesteps, self.history, dtype=torch.float64)
        self.loss_counts = torch.zeros(self.num_timesteps, dtype=torch.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history).all())

    def probabilities(self) -> torch.Tensor:
        """p_t (float64, sums to 1)."""
        T = self.num_timesteps
        if not self.warmed_up():
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        w = torch.sqrt((self.loss_history**2).mean(dim=-1))
        w = w / w.sum()
        w = w * (1.0 - self.uniform_prob) + self.uniform_prob / T
        return w / w.sum()

    def sample(self, batch_size: int, device="cpu", generator: torch.Generator | None = None):
        p = self.probabilities()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.to(device=device, dtype=torch.float32)

    def sample_each(self, generators, device="cpu"):
        p = self.probabilities()
        t = torch.cat([torch.multinomial(p, 1, replacement=True, generator=g) for g in generators])
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.to(device=device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each (t_i, loss_i) to t_i's history (oldest dropped once full).

        In data-parallel training pass the losses gathered from every rank.
        """
        t_list = t.detach().cpu().tolist()
        loss_list = losses.detach().double().cpu().tolist()
        for ti, li in zip(t_list, loss_list, strict=True):
            n = int(self.loss_counts[ti])
            if n == self.history:
                self.loss_history[ti, :-1] = self.loss_history[ti, 1:].clone()
                self.loss_history[ti, -1] = li
            else:
                self.loss_history[ti, n] = li
                self.loss_counts[ti] = n + 1

    def state_dict(self) -> dict:
        return {
            "loss_history": self.loss_history.clone(),
            "loss_counts": self.loss_counts.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            history = torch.as_tensor(state["loss_history"], dtype=torch.float64)
            counts = torch.as_tensor(state["loss_counts"], dtype=torch.int64)
        except (KeyError, TypeError) as e:
            raise CheckpointError(
                f"timestep sampler state: expected keys loss_history and loss_counts ({e})"
            ) from None
        expected = (self.num_timesteps, self.history)
        if tuple(history.shape) != expected or tuple(counts.shape) != (self.num_timesteps,):
            raise CheckpointError(
                f"timestep sampler state: loss_history shape {tuple(history.shape)} / loss_counts "
                f"shape {tuple(counts.shape)}, expected {expected} / ({self.num_timesteps},)"
            )
        self.loss_history = history.clone()
        self.loss_counts = counts.clone()


def create_timestep_sampler(name: str, num_timesteps: int):
    """A sampler by the reference's names: "uniform" or "loss-second-moment"."""
    if name == "uniform":
        return UniformSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentSampler(num_timesteps)
    raise ConfigError(
        f"schedule sampler: got {name!r}, expected 'uniform' or 'loss-second-moment'"
    )
