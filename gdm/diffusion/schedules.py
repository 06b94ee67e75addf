"""Noise schedules (ADM.md section 3) and the arrays derived from them.

A `Schedule` holds only float64 tensors (on the CPU) indexed by the *sampler's* step index
t = 0..len-1. When the schedule is respaced, `timestep_map[t]` is the original timestep that the
network was trained on; `model_timesteps` performs that mapping. Values are gathered and cast to
the input's dtype at the point of use (`extract`), as the reference does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gdm.errors import ConfigError

BETA_SCHEDULES = ("linear", "cosine")


def cosine_alpha_bar(t: float) -> float:
    """IDDPM eq. 17: abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2) with s = 0.008, t in [0, 1]."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def betas_for_alpha_bar(num_timesteps: int, alpha_bar, max_beta: float = 0.999) -> torch.Tensor:
    """beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta) (IDDPM, clipped to avoid beta = 1)."""
    betas = []
    for i in range(num_timesteps):
        t1, t2 = i / num_timesteps, (i + 1) / num_timesteps
        betas.append(min(1.0 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return torch.tensor(betas, dtype=torch.float64)


def get_named_beta_schedule(name: str, num_timesteps: int) -> torch.Tensor:
    """Betas (float64, length T) of the "linear" (DDPM, scaled by 1000/T) or "cosine" schedule."""
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ConfigError(
            f"diffusion steps: got {num_timesteps!r}, expected a positive integer"
        )
    if name == "linear":
        # DDPM's linear schedule, rescaled so that any T gives the same abar curve shape.
        scale = 1000.0 / num_timesteps
        if scale * 0.02 >= 1.0:
            raise ConfigError(
                f"linear noise schedule: {num_timesteps} steps gives a final beta of "
                f"{scale * 0.02:g} >= 1; use at least 21 steps (or the cosine schedule)"
            )
        return torch.linspace(
            scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64
        )
    if name == "cosine":
        return betas_for_alpha_bar(num_timesteps, cosine_alpha_bar)
    raise ConfigError(
        f"noise schedule: got {name!r}, expected one of {', '.join(BETA_SCHEDULES)}"
    )


@dataclass(frozen=True)
class Schedule:
    """Arrays of a (possibly respaced) diffusion process; all float64 CPU tensors of length T.

    Notation: alphas_cumprod = abar_t, alphas_cumprod_prev = abar_{t-1} (abar_{-1} = 1),
    posterior = q(x_{t-1} | x_t, x_0) (DDPM eq. 6-7).
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    timestep_map: torch.Tensor  # int64: sampler index -> original timestep

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])


def make_schedule(betas, timestep_map=None) -> Schedule:
    """Derive every array used by training and sampling from 1-D betas (computed in float64)."""
    betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
    if betas.ndim != 1 or betas.numel() < 1:
        raise ConfigError(f"betas: got shape {tuple(betas.shape)}, expected a non-empty 1-D array")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ConfigError("betas: every beta must lie in (0, 1) (beta = 1 makes abar_t = 0)")
    T = betas.shape[0]
    if timestep_map is None:
        timestep_map = torch.arange(T, dtype=torch.int64)
    else:
        timestep_map = torch.as_tensor(timestep_map, dtype=torch.int64).detach().cpu().clone()
        if timestep_map.shape != (T,):
            raise ConfigError(
                f"timestep_map: got shape {tuple(timestep_map.shape)}, expected ({T},)"
            )

    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, dim=0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    # DDPM eq. 7: beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t.
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    # beta_tilde_0 = 0, so the log is clipped by repeating beta_tilde_1 at t = 0 (as IDDPM).
    if T > 1:
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
    else:
        clipped = betas.clone()
    return Schedule(
        betas=betas,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_alphas_cumprod=abar.sqrt(),
        sqrt_one_minus_alphas_cumprod=(1.0 - abar).sqrt(),
        sqrt_recip_alphas_cumprod=(1.0 / abar).sqrt(),
        sqrt_recipm1_alphas_cumprod=(1.0 / abar - 1.0).sqrt(),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=clipped.log(),
        # DDPM eq. 7: mu_tilde = coef1 * x_0 + coef2 * x_t.
        posterior_mean_coef1=betas * abar_prev.sqrt() / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        timestep_map=timestep_map,
    )


def extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] as a [B, 1, ..., 1] tensor with `like`'s dtype and device.

    The float64 array is rounded to like.dtype before the gather (the same values as gathering
    in float64 and then casting), so no float64 tensor reaches devices that lack it.
    """
    out = arr.to(device=like.device, dtype=like.dtype)[t.to(like.device)]
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))


def model_timesteps(s: Schedule, t: torch.Tensor) -> torch.Tensor:
    """The original timesteps (0..T_train-1) the network sees for sampler indices t."""
    return s.timestep_map.to(device=t.device)[t]
