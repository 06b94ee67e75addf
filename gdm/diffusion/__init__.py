"""Diffusion math (ADM.md section 3): schedules, respacing, q/p, losses, samplers, guidance.

Everything is a flat function of a `Schedule` (arrays only); networks enter as functions
`model_fn(x_t, t_model)` and `classifier_fn(x, t_model)` taking the ORIGINAL timesteps.
"""

from gdm.diffusion.gaussian import (
    p_mean_variance,
    predict_eps_from_xstart,
    predict_xstart_from_eps,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    split_model_output,
)
from gdm.diffusion.guidance import classifier_free_guidance, classifier_guidance, guidance_active
from gdm.diffusion.losses import (
    LOSS_TYPES,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    training_losses,
    vb_terms_bpd,
)
from gdm.diffusion.noise import randn_like_per_sample, sample_generators, sample_seed
from gdm.diffusion.respacing import build_schedule, respace, space_timesteps
from gdm.diffusion.samplers import (
    ddim_sample,
    ddim_step,
    ddpm_sample,
    ddpm_step,
    dpmpp2m_sample,
    guided_prediction,
)
from gdm.diffusion.schedules import (
    BETA_SCHEDULES,
    Schedule,
    extract,
    get_named_beta_schedule,
    make_schedule,
    model_timesteps,
)
from gdm.diffusion.timesteps import (
    LossSecondMomentSampler,
    UniformSampler,
    create_timestep_sampler,
)

__all__ = [
    "BETA_SCHEDULES",
    "LOSS_TYPES",
    "LossSecondMomentSampler",
    "Schedule",
    "UniformSampler",
    "approx_standard_normal_cdf",
    "build_schedule",
    "classifier_free_guidance",
    "classifier_guidance",
    "create_timestep_sampler",
    "ddim_sample",
    "ddim_step",
    "ddpm_sample",
    "ddpm_step",
    "discretized_gaussian_log_likelihood",
    "dpmpp2m_sample",
    "extract",
    "get_named_beta_schedule",
    "guidance_active",
    "guided_prediction",
    "make_schedule",
    "mean_flat",
    "model_timesteps",
    "normal_kl",
    "p_mean_variance",
    "predict_eps_from_xstart",
    "predict_xstart_from_eps",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "randn_like_per_sample",
    "respace",
    "sample_generators",
    "sample_seed",
    "space_timesteps",
    "split_model_output",
    "training_losses",
    "vb_terms_bpd",
]
