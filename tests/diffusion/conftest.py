"""Shared helpers for the diffusion tests: tiny schedules and analytic 'models'."""

import pytest
import torch

from gdm.diffusion import build_schedule, make_schedule


@pytest.fixture
def tiny_schedule():
    """Four hand-picked betas: small enough to compute every term by hand."""
    return make_schedule(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))


@pytest.fixture
def linear_1000():
    return build_schedule("linear", 1000)


def _oracle_eps_model(x0: torch.Tensor, base_abar: torch.Tensor, learn_sigma: bool = False):
    """The exact eps for a dataset holding the single point x0 (batched [1, C, ...] or [C, ...]).

    Indexes the ORIGINAL schedule's abar with the timesteps it is given, so it is only right
    when the sampler passes original timesteps (timestep_map).
    """

    def model_fn(x_t, t_model):
        abar = base_abar[t_model].to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        if learn_sigma:
            return torch.cat([eps, torch.zeros_like(eps)], dim=1)
        return eps

    return model_fn


@pytest.fixture
def oracle_eps_model():
    """Factory: oracle_eps_model(x0, base_abar, learn_sigma=False) -> model_fn."""
    return _oracle_eps_model
