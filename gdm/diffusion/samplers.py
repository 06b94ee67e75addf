"""Samplers: ancestral DDPM (ADM Algorithm 1) and DDIM (ADM Algorithm 2), with optional guidance.

model_fn(x_t, t_model) -> eps (or [eps, v] with learned sigma) and cond_fn(x_t, t_model) ->
s * grad log p(y|x_t) are both called with the ORIGINAL timesteps (`model_timesteps`), so a
network trained on T steps can be sampled with any respaced `Schedule`.

Randomness: one CPU generator per sample (`gdm.diffusion.noise`); x_T and every step's noise of
sample i come from generators[i], so a sample does not depend on its batch.
`progress`, if given, is called as progress(steps_done, total_steps) after every step.
With clip_denoised the returned x_0 is clamped to [-1, 1] (guidance can push the last step's
mean slightly outside; the reference leaves that to the uint8 conversion).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gdm.diffusion.gaussian import (
    p_mean_variance,
    predict_eps_from_xstart,
    predict_xstart_from_eps,
)
from gdm.diffusion.guidance import guidance_active
from gdm.diffusion.noise import randn_like_per_sample
from gdm.diffusion.schedules import Schedule, extract, model_timesteps


def _nonzero_mask(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """1 where t > 0, 0 at t = 0 (no noise is added on the last step)."""
    return (t != 0).to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


def ddpm_step(
    model_fn,
    s: Schedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    noise: torch.Tensor | None,
    cond_fn=None,
    learn_sigma: bool,
    clip_denoised: bool = True,
    sigma_small: bool = False,
) -> dict:
    """One ancestral step x_t -> x_{t-1} (ADM Algorithm 1).

    mu, Sigma = p(x_{t-1}|x_t); guided mean mu' = mu + Sigma * cond_fn(x_t, t) (the scale s is
    inside cond_fn; the gradient is taken at x_t); x_{t-1} = mu' + sqrt(Sigma) z, z = 0 at t = 0.
    Returns dict(sample, mean, variance, log_variance, pred_xstart, eps).
    """
    t_model = model_timesteps(s, t)
    out = p_mean_variance(
        s,
        model_fn(x_t, t_model),
        x_t,
        t,
        learn_sigma=learn_sigma,
        clip_denoised=clip_denoised,
        sigma_small=sigma_small,
    )
    mean = out["mean"]
    if guidance_active(cond_fn):
        mean = mean + out["variance"] * cond_fn(x_t, t_model).to(mean.dtype)
    sample = mean
    if bool((t != 0).any()):
        if noise is None:
            raise ValueError("ddpm_step needs noise for t > 0")
        sample = mean + _nonzero_mask(t, x_t) * torch.exp(0.5 * out["log_variance"]) * noise
    return {**out, "mean": mean, "sample": sample}


def ddim_step(
    model_fn,
    s: Schedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    noise: torch.Tensor | None,
    eta: float = 0.0,
    cond_fn=None,
    learn_sigma: bool,
    clip_denoised: bool = True,
) -> dict:
    """One DDIM step x_t -> x_{t-1} (ADM Algorithm 2; DDIM eq. 12).

    eps' = eps - sqrt(1 - abar_t) * cond_fn(x_t, t); x0' = (x_t - sqrt(1 - abar_t) eps')/sqrt(abar_t);
    sigma = eta * sqrt((1 - abar_{t-1}) / (1 - abar_t)) * sqrt(1 - abar_t / abar_{t-1});
    x_{t-1} = sqrt(abar_{t-1}) x0' + sqrt(1 - abar_{t-1} - sigma^2) eps' + sigma z.
    eps is re-derived from the (clipped) x0 prediction, as in the reference code.
    Returns dict(sample, pred_xstart, eps).
    """
    t_model = model_timesteps(s, t)
    out = p_mean_variance(
        s, model_fn(x_t, t_model), x_t, t, learn_sigma=learn_sigma, clip_denoised=clip_denoised
    )
    pred_xstart = out["pred_xstart"]
    eps = predict_eps_from_xstart(s, x_t, t, pred_xstart)
    if guidance_active(cond_fn):
        sqrt_one_minus_abar = extract(s.sqrt_one_minus_alphas_cumprod, t, x_t)
        eps = eps - sqrt_one_minus_abar * cond_fn(x_t, t_model).to(eps.dtype)
        pred_xstart = predict_xstart_from_eps(s, x_t, t, eps)

    abar = extract(s.alphas_cumprod, t, x_t)
    abar_prev = extract(s.alphas_cumprod_prev, t, x_t)
    sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
    sample = abar_prev.sqrt() * pred_xstart + torch.sqrt(1 - abar_prev - sigma**2) * eps
    if eta != 0 and bool((t != 0).any()):
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise for t > 0")
        sample = sample + _nonzero_mask(t, x_t) * sigma * noise
    return {"sample": sample, "pred_xstart": pred_xstart, "eps": eps}


def _check(s: Schedule, shape: Sequence[int], generators: Sequence[torch.Generator]) -> None:
    if len(shape) < 2:
        raise ValueError(f"shape must be [B, C, ...], got {tuple(shape)}")
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per sample: {len(generators)} for batch {shape[0]}")


def ddpm_sample(
    model_fn,
    s: Schedule,
    shape: Sequence[int],
    *,
    generators: Sequence[torch.Generator],
    cond_fn=None,
    learn_sigma: bool,
    clip_denoised: bool = True,
    sigma_small: bool = False,
    device="cpu",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Ancestral sampling from x_T ~ N(0, I) over every step of `s` (ADM Algorithm 1)."""
    _check(s, shape, generators)
    batch, per_sample = shape[0], tuple(shape[1:])
    x = randn_like_per_sample(generators, per_sample, torch.float32, device)
    total = s.num_timesteps
    with torch.no_grad():
        for done, i in enumerate(reversed(range(total)), start=1):
            t = torch.full((batch,), i, dtype=torch.int64, device=device)
            noise = randn_like_per_sample(generators, per_sample, x.dtype, device) if i > 0 else None
            x = ddpm_step(
                model_fn, s, x, t,
                noise=noise, cond_fn=cond_fn, learn_sigma=learn_sigma,
                clip_denoised=clip_denoised, sigma_small=sigma_small,
            )["sample"]
            if progress is not None:
                progress(done, total)
    return x.clamp(-1, 1) if clip_denoised else x


def ddim_sample(
    model_fn,
    s: Schedule,
    shape: Sequence[int],
    *,
    generators: Sequence[torch.Generator],
    eta: float = 0.0,
    cond_fn=None,
    learn_sigma: bool,
    clip_denoised: bool = True,
    device="cpu",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """DDIM sampling over every step of `s` (ADM Algorithm 2); eta = 0 is deterministic given x_T."""
    _check(s, shape, generators)
    batch, per_sample = shape[0], tuple(shape[1:])
    x = randn_like_per_sample(generators, per_sample, torch.float32, device)
    total = s.num_timesteps
    with torch.no_grad():
        for done, i in enumerate(reversed(range(total)), start=1):
            t = torch.full((batch,), i, dtype=torch.int64, device=device)
            noise = None
            if eta != 0 and i > 0:
                noise = randn_like_per_sample(generators, per_sample, x.dtype, device)
            x = ddim_step(
                model_fn, s, x, t,
                noise=noise, eta=eta, cond_fn=cond_fn, learn_sigma=learn_sigma,
                clip_denoised=clip_denoised,
            )["sample"]
            if progress is not None:
                progress(done, total)
    return x.clamp(-1, 1) if clip_denoised else x
