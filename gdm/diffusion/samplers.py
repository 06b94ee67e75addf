"""Samplers: ancestral DDPM (ADM Algorithm 1), DDIM (ADM Algorithm 2) and DPM-Solver++(2M)
(Lu et al. 2022), all with optional classifier guidance.

model_fn(x_t, t_model) -> eps (or [eps, v] with learned sigma) and cond_fn(x_t, t_model) ->
s * grad log p(y|x_t) are both called with the ORIGINAL timesteps (`model_timesteps`), so a
network trained on T steps can be sampled with any respaced `Schedule`.

Contract (as k-diffusion's and EDM's samplers): `x_T` may be given (any float dtype; the
computation runs in its dtype); by default it is drawn from the per-sample generators.
Randomness: one CPU generator per sample (`gdm.diffusion.noise`); x_T and every step's noise of
sample i come from generators[i], so a sample does not depend on its batch. The generators'
first draw is x_T's: when x_T is passed that draw is skipped, so the step noise is the same
whether x_T came in or was drawn.
`progress`, if given, is called as progress(steps_done, total_steps) after every step.
With clip_denoised the returned x_0 is clamped to [-1, 1] (guidance can push the last step's
mean slightly outside; the reference leaves that to the uint8 conversion).
"""

from __future__ import annotations

import math
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
    noise: torch.Tensor | None = None,
    cond_fn=None,
    learn_sigma: bool,
    clip_denoised: bool = True,
    sigma_small: bool = False,
) -> dict:
    """One ancestral step x_t -> x_{t-1} (ADM Algorithm 1).

    mu, Sigma = p(x_{t-1}|x_t); guided mean mu' = mu + Sigma * cond_fn(x_t, t) (the scale s is
    inside cond_fn; the gradient is taken at x_t); x_{t-1} = mu' + sqrt(Sigma) z, z = 0 at t = 0.
    Returns dict(mean, variance, log_variance, pred_xstart, eps) and, when `noise` z is given or
    every t is 0, `sample` = x_{t-1}. Without noise the step computes the (guided) mean only.
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
    result = {**out, "mean": mean}
    if not bool((t != 0).any()):
        result["sample"] = mean
    elif noise is not None:
        result["sample"] = mean + _nonzero_mask(t, x_t) * torch.exp(0.5 * out["log_variance"]) * noise
    return result


def guided_prediction(model_fn, s: Schedule, x_t: torch.Tensor, t: torch.Tensor, *, cond_fn=None,
                      learn_sigma: bool, clip_denoised: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0', eps') at x_t: the network's x_0 (clipped if clip_denoised), eps re-derived from it,
    then classifier guidance on eps (ADM Algorithm 2): eps' = eps - sqrt(1 - abar_t) * cond_fn(x_t, t),
    x0' = (x_t - sqrt(1 - abar_t) eps') / sqrt(abar_t). One network call, one cond_fn call.
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
    return pred_xstart, eps


def ddim_step(
    model_fn,
    s: Schedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
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
    pred_xstart, eps = guided_prediction(model_fn, s, x_t, t, cond_fn=cond_fn, learn_sigma=learn_sigma,
                                         clip_denoised=clip_denoised)
    abar = extract(s.alphas_cumprod, t, x_t)
    abar_prev = extract(s.alphas_cumprod_prev, t, x_t)
    sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
    sample = abar_prev.sqrt() * pred_xstart + torch.sqrt(1 - abar_prev - sigma**2) * eps
    if eta != 0 and bool((t != 0).any()):
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise for t > 0")
        sample = sample + _nonzero_mask(t, x_t) * sigma * noise
    return {"sample": sample, "pred_xstart": pred_xstart, "eps": eps}


def _initial_noise(shape: Sequence[int], generators: Sequence[torch.Generator], x_T, device) -> torch.Tensor:
    """x_T: the given one (moved to `device`, dtype kept) or N(0, I) from the per-sample generators.

    The generators' first draw belongs to x_T and is consumed either way (see the module docstring).
    """
    if len(shape) < 2:
        raise ValueError(f"shape must be [B, C, ...], got {tuple(shape)}")
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per sample: {len(generators)} for batch {shape[0]}")
    drawn = randn_like_per_sample(generators, tuple(shape[1:]), torch.float32, device)
    if x_T is None:
        return drawn
    if tuple(x_T.shape) != tuple(shape) or not x_T.dtype.is_floating_point:
        raise ValueError(f"x_T must be a float tensor of shape {tuple(shape)}, got {tuple(x_T.shape)} {x_T.dtype}")
    return x_T.to(device)


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
    x_T: torch.Tensor | None = None,
    device="cpu",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Ancestral sampling from x_T ~ N(0, I) over every step of `s` (ADM Algorithm 1)."""
    x = _initial_noise(shape, generators, x_T, device)
    batch, per_sample = shape[0], tuple(shape[1:])
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
    x_T: torch.Tensor | None = None,
    device="cpu",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """DDIM sampling over every step of `s` (ADM Algorithm 2); eta = 0 is deterministic given x_T."""
    x = _initial_noise(shape, generators, x_T, device)
    batch, per_sample = shape[0], tuple(shape[1:])
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


def dpmpp2m_sample(
    model_fn,
    s: Schedule,
    shape: Sequence[int],
    *,
    generators: Sequence[torch.Generator],
    cond_fn=None,
    learn_sigma: bool,
    clip_denoised: bool = True,
    x_T: torch.Tensor | None = None,
    device="cpu",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): the multistep second-order solver of the diffusion ODE in data prediction
    (Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models", arXiv 2211.01095, Algorithm 2), one network call per step.

    Notation: alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t),
    x_theta = the guided, clipped x_0 prediction (`guided_prediction`: the paper's guided solver
    uses eps - s * sigma_t * grad log p(y|x_t), i.e. ADM Algorithm 2's eps', and thresholds x_0).
    The steps run over the respaced schedule's indices t_0 = N-1 > ... > 0, then to abar = 1:
        h_i = lambda_{t_i} - lambda_{t_{i-1}}, r_i = h_{i-1} / h_i,
        D_i = (1 + 1/(2 r_i)) x_theta(x_{t_{i-1}}) - 1/(2 r_i) x_theta(x_{t_{i-2}}),
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i.
    The first step (no history) and the last (to sigma = 0, h = inf) are first order, D = x_theta:
    that step is exactly DDIM (eta = 0), so a two-step schedule gives DDIM's result. Deterministic
    given x_T; the coefficients are computed in float64 and rounded to x's dtype.
    """
    x = _initial_noise(shape, generators, x_T, device)
    batch = shape[0]
    abar = s.alphas_cumprod.tolist()
    alpha = [math.sqrt(a) for a in abar]
    sigma = [math.sqrt(1.0 - a) for a in abar]
    lam = [math.log(a) - math.log(b) for a, b in zip(alpha, sigma, strict=True)]
    total = s.num_timesteps
    x0_prev, h_prev = None, None
    with torch.no_grad():
        for done, i in enumerate(reversed(range(total)), start=1):
            t = torch.full((batch,), i, dtype=torch.int64, device=device)
            x0, _ = guided_prediction(model_fn, s, x, t, cond_fn=cond_fn, learn_sigma=learn_sigma,
                                      clip_denoised=clip_denoised)
            if i == 0:  # to abar = 1: sigma_next = 0, alpha_next = 1, e^{-h} = 0
                x = x0
            else:
                h = lam[i - 1] - lam[i]
                if x0_prev is None:
                    d = x0
                else:
                    r = h_prev / h
                    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
                x = (sigma[i - 1] / sigma[i]) * x - (alpha[i - 1] * math.expm1(-h)) * d
                x0_prev, h_prev = x0, h
            if progress is not None:
                progress(done, total)
    return x.clamp(-1, 1) if clip_denoised else x
