"""Training objectives: L_simple, the variational bound L_vb, and IDDPM's hybrid (ADM.md sec. 3).

Loss types of `training_losses`:
  "mse"             - L_simple = mean((eps - eps_hat)^2) (DDPM eq. 14). With learn_sigma=True the
                      variance channels get no gradient; use "hybrid" to train them.
  "hybrid"          - L_simple + L_vb with the mean frozen (eps_hat detached), so L_vb only trains
                      the variance (IDDPM eq. 16). This is what the reference code does for ADM's
                      configs (loss type MSE + learned sigma, rescale_learned_sigmas=False): the
                      vb term is NOT rescaled. Requires learn_sigma=True.
  "rescaled_hybrid" - as "hybrid" with L_vb multiplied by T/1000 (the reference's RESCALED_MSE,
                      IDDPM's default; not used by ADM).
  "kl"              - L_vb alone, through the whole model output (no freezing).
L_vb terms are in bits per dimension: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the
discretized decoder NLL -log p(x_0|x_1) at t = 0 (DDPM eq. 5, 13).
"""

from __future__ import annotations

import math

import torch

from gdm.diffusion.gaussian import (
    p_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    split_model_output,
)
from gdm.diffusion.schedules import Schedule, model_timesteps
from gdm.errors import ConfigError

LOSS_TYPES = ("mse", "hybrid", "rescaled_hybrid", "kl")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the batch dimension."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) by the tanh approximation used by the reference code (max error ~3e-4)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log p(x) elementwise, in nats, for images x in [-1, 1] quantised to 256 levels.

    Each level is a bin of width 2/255 under N(means, exp(log_scales)^2) (DDPM eq. 13); the end
    bins extend to -inf / +inf.
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError("x, means and log_scales must have the same shape")
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )


def vb_terms_bpd(
    s: Schedule,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    learn_sigma: bool,
    clip_denoised: bool = False,
) -> dict:
    """One L_vb term per sample in bits/dim: KL for t > 0, decoder NLL at t = 0.

    Returns dict(output, pred_xstart).
    """
    true_mean, _, true_log_variance = q_posterior_mean_variance(s, x0, x_t, t)
    out = p_mean_variance(
        s, model_output, x_t, t, learn_sigma=learn_sigma, clip_denoised=clip_denoised
    )
    kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
    kl = mean_flat(kl) / math.log(2.0)
    decoder_nll = -discretized_gaussian_log_likelihood(
        x0, means=out["mean"], log_scales=0.5 * out["log_variance"]
    )
    decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
    return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}


def training_losses(
    s: Schedule,
    model_fn,
    x0: torch.Tensor,
    t: torch.Tensor,
    *,
    noise: torch.Tensor,
    loss_type: str = "mse",
    learn_sigma: bool = False,
) -> dict:
    """Per-sample losses {"loss", "mse", and "vb" when it enters the loss} for a batch.

    model_fn(x_t, t_model) -> output, called with the original timesteps (timestep_map[t]).
    `noise` is the eps used to draw x_t = q_sample(x0, t, noise). See the module docstring.
    """
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"loss type: got {loss_type!r}, expected one of {', '.join(LOSS_TYPES)}")
    if loss_type in ("hybrid", "rescaled_hybrid") and not learn_sigma:
        raise ConfigError(
            f"loss type {loss_type!r} trains the learned variance and needs learn_sigma=True"
        )
    x_t = q_sample(s, x0, t, noise)
    model_output = model_fn(x_t, model_timesteps(s, t))
    eps_hat, v = split_model_output(model_output, x0, learn_sigma)  # checks the channel count
    terms = {"mse": mean_flat((noise - eps_hat) ** 2)}
    if loss_type == "kl":
        terms["vb"] = vb_terms_bpd(s, model_output, x0, x_t, t, learn_sigma=learn_sigma)["output"]
        terms["mse"] = terms["mse"].detach()  # reported only
        terms["loss"] = terms["vb"]
        return terms
    if loss_type == "mse":
        terms["loss"] = terms["mse"]
        return terms

    # Hybrid: freeze the mean so that L_vb only trains the variance channels (IDDPM sec. 3.1).
    frozen = torch.cat([eps_hat.detach(), v], dim=1)
    vb = vb_terms_bpd(s, frozen, x0, x_t, t, learn_sigma=True)["output"]
    if loss_type == "rescaled_hybrid":
        vb = vb * (s.num_timesteps / 1000.0)
    terms["vb"] = vb
    terms["loss"] = terms["mse"] + vb
    return terms
