"""Gaussian diffusion: the forward process q, its posterior, and the reverse model p.

Flat functions of a `Schedule` `s`, with t the sampler index (0..len(s)-1). The network's output
is passed in (not the network itself); see `model_timesteps` for the timesteps it must see.
"""

from __future__ import annotations

import torch

from gdm.diffusion.schedules import Schedule, extract
from gdm.errors import ConfigError


def q_mean_variance(s: Schedule, x0: torch.Tensor, t: torch.Tensor):
    """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4): (mean, var, log_var)."""
    mean = extract(s.sqrt_alphas_cumprod, t, x0) * x0
    variance = extract(1.0 - s.alphas_cumprod, t, x0).expand_as(x0)
    log_variance = extract((1.0 - s.alphas_cumprod).log(), t, x0).expand_as(x0)
    return mean, variance, log_variance


def q_sample(s: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4, reparameterised)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    return (
        extract(s.sqrt_alphas_cumprod, t, x0) * x0
        + extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )


def q_posterior_mean_variance(s: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I) (DDPM eq. 6-7): (mean, var, log_var)."""
    mean = (
        extract(s.posterior_mean_coef1, t, x_t) * x0
        + extract(s.posterior_mean_coef2, t, x_t) * x_t
    )
    variance = extract(s.posterior_variance, t, x_t).expand_as(x_t)
    log_variance = extract(s.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
    return mean, variance, log_variance


def predict_xstart_from_eps(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (DDPM eq. 4 solved for x_0)."""
    return (
        extract(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t
        - extract(s.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
    )


def predict_eps_from_xstart(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, pred_xstart):
    """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1/abar_t - 1) (inverse of the above)."""
    return (
        extract(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart
    ) / extract(s.sqrt_recipm1_alphas_cumprod, t, x_t)


def split_model_output(model_output: torch.Tensor, x_t: torch.Tensor, learn_sigma: bool):
    """(eps, v): with learned sigma the network predicts 2*C channels, [eps, v]; else v is None."""
    channels = x_t.shape[1]
    expected = 2 * channels if learn_sigma else channels
    if model_output.shape[0] != x_t.shape[0] or model_output.shape[1] != expected:
        raise ConfigError(
            f"model output: got shape {tuple(model_output.shape)}, expected {expected} channels "
            f"for {channels}-channel input with learn_sigma={learn_sigma}"
        )
    model_output = model_output.to(x_t.dtype)
    if learn_sigma:
        eps, v = torch.split(model_output, channels, dim=1)
        return eps, v
    return model_output, None


def p_mean_variance(
    s: Schedule,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    learn_sigma: bool,
    clip_denoised: bool = True,
    sigma_small: bool = False,
) -> dict:
    """p(x_{t-1} | x_t) from an eps-predicting network's output.

    Variance:
      learn_sigma=True  - learned range (IDDPM eq. 15): v in [-1, 1], f = (v + 1) / 2,
                          log sigma^2 = f log beta_t + (1 - f) log beta_tilde_t.
      learn_sigma=False - fixed. As in the reference ADM code, the default is "fixed large"
                          (sigma^2 = beta_t, with beta_tilde_1 at t = 0); `sigma_small=True` gives
                          "fixed small" (sigma^2 = beta_tilde_t, the posterior variance).
    Mean: mu_tilde(x_0_hat, x_t) with x_0_hat from eps (clipped to [-1, 1] if clip_denoised).
    Returns dict(mean, variance, log_variance, pred_xstart, eps).
    """
    eps, v = split_model_output(model_output, x_t, learn_sigma)
    if learn_sigma:
        min_log = extract(s.posterior_log_variance_clipped, t, x_t)
        max_log = extract(s.betas.log(), t, x_t)
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        variance = torch.exp(log_variance)
    elif sigma_small:
        variance = extract(s.posterior_variance, t, x_t).expand_as(x_t)
        log_variance = extract(s.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
    else:
        large = torch.cat([s.posterior_variance[1:2], s.betas[1:]]) if s.num_timesteps > 1 \
            else s.betas
        variance = extract(large, t, x_t).expand_as(x_t)
        log_variance = extract(large.log(), t, x_t).expand_as(x_t)

    pred_xstart = predict_xstart_from_eps(s, x_t, t, eps)
    if clip_denoised:
        pred_xstart = pred_xstart.clamp(-1, 1)
    mean, _, _ = q_posterior_mean_variance(s, pred_xstart, x_t, t)
    return {
        "mean": mean,
        "variance": variance,
        "log_variance": log_variance,
        "pred_xstart": pred_xstart,
        "eps": eps,
    }
