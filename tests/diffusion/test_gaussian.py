"""Forward process moments, posterior (Bayes for Gaussians) and the reverse-model variance."""

import math

import pytest
import torch

from gdm.diffusion import (
    p_mean_variance,
    predict_eps_from_xstart,
    predict_xstart_from_eps,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
)
from gdm.errors import ConfigError


def test_q_sample_moments(linear_1000):
    s = linear_1000
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    for step in (10, 500, 900):
        t = torch.full((n,), step, dtype=torch.int64)
        x_t = q_sample(s, x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
        abar = s.alphas_cumprod[step].item()
        se = math.sqrt((1 - abar) / n)
        assert abs(x_t.mean().item() - math.sqrt(abar) * 0.7) < 5 * se
        assert x_t.var().item() == pytest.approx(1 - abar, rel=0.015)
        mean, var, log_var = q_mean_variance(s, x0[:2], t[:2])
        torch.testing.assert_close(mean, torch.full_like(mean, math.sqrt(abar) * 0.7))
        torch.testing.assert_close(var, torch.full_like(var, 1 - abar))
        torch.testing.assert_close(log_var, var.log())


def test_q_sample_rejects_mismatched_noise(tiny_schedule):
    with pytest.raises(ValueError):
        q_sample(tiny_schedule, torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                 torch.zeros(2, 4))


def _bayes_posterior(betas, t, x0, x_t):
    """x_{t-1}|x0 ~ N(sqrt(abar_{t-1}) x0, 1-abar_{t-1}); x_t|x_{t-1} ~ N(sqrt(a_t) x_{t-1}, b_t)."""
    abar_prev = math.prod(1 - b for b in betas[:t])
    a_t = 1 - betas[t]
    prior_var = 1 - abar_prev
    precision = 1 / prior_var + a_t / betas[t]
    var = 1 / precision
    mean = var * (math.sqrt(abar_prev) * x0 / prior_var + math.sqrt(a_t) * x_t / betas[t])
    return mean, var


def test_posterior_against_bayes(tiny_schedule):
    betas = [0.1, 0.2, 0.3, 0.4]
    x0 = torch.tensor([[0.3], [-0.8], [0.5]], dtype=torch.float64)
    x_t = torch.tensor([[1.2], [0.1], [-0.4]], dtype=torch.float64)
    for step in (1, 2, 3):
        t = torch.full((3,), step, dtype=torch.int64)
        mean, var, log_var = q_posterior_mean_variance(tiny_schedule, x0, x_t, t)
        for i in range(3):
            m_ref, v_ref = _bayes_posterior(betas, step, x0[i, 0].item(), x_t[i, 0].item())
            assert mean[i, 0].item() == pytest.approx(m_ref, rel=1e-12)
            assert var[i, 0].item() == pytest.approx(v_ref, rel=1e-12)
            assert log_var[i, 0].item() == pytest.approx(math.log(v_ref), rel=1e-12)
    # t = 0: x_{-1} is x0 itself (zero variance, log variance clipped to that of t = 1)
    t0 = torch.zeros(3, dtype=torch.int64)
    mean, var, log_var = q_posterior_mean_variance(tiny_schedule, x0, x_t, t0)
    torch.testing.assert_close(mean, x0, rtol=1e-12, atol=1e-12)
    assert var.abs().max().item() < 1e-15
    assert log_var[0, 0].item() == pytest.approx(math.log(_bayes_posterior(betas, 1, 0, 0)[1]))


def test_xstart_eps_round_trip(linear_1000):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = q_sample(linear_1000, x0, t, eps)
    torch.testing.assert_close(predict_xstart_from_eps(linear_1000, x_t, t, eps), x0)
    torch.testing.assert_close(predict_eps_from_xstart(linear_1000, x_t, t, x0), eps)


def test_p_variance_learned_range_endpoints(tiny_schedule):
    s = tiny_schedule
    x_t = torch.zeros(3, 2, 1, 1, dtype=torch.float64)
    t = torch.tensor([0, 2, 3])
    eps = torch.zeros_like(x_t)
    for v, expected in ((1.0, s.betas.log()), (-1.0, s.posterior_log_variance_clipped)):
        out = p_mean_variance(
            s, torch.cat([eps, torch.full_like(eps, v)], 1), x_t, t, learn_sigma=True
        )
        torch.testing.assert_close(out["log_variance"][:, 0, 0, 0], expected[t])
    # v = 0 interpolates half way in log space
    out = p_mean_variance(s, torch.cat([eps, torch.zeros_like(eps)], 1), x_t, t, learn_sigma=True)
    mid = 0.5 * (s.betas.log() + s.posterior_log_variance_clipped)[t]
    torch.testing.assert_close(out["log_variance"][:, 1, 0, 0], mid)
    torch.testing.assert_close(out["variance"], out["log_variance"].exp())


def test_p_variance_fixed_large_and_small(tiny_schedule):
    s = tiny_schedule
    x_t = torch.zeros(4, 1, 1, 1, dtype=torch.float64)
    t = torch.arange(4)
    large = p_mean_variance(s, torch.zeros_like(x_t), x_t, t, learn_sigma=False)
    assert large["variance"].flatten().tolist() == pytest.approx(
        [s.posterior_variance[1].item(), 0.2, 0.3, 0.4], rel=1e-12
    )
    small = p_mean_variance(s, torch.zeros_like(x_t), x_t, t, learn_sigma=False, sigma_small=True)
    torch.testing.assert_close(small["variance"].flatten(), s.posterior_variance)


def test_p_mean_is_posterior_of_predicted_xstart(tiny_schedule):
    s = tiny_schedule
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(4, 1, 3, dtype=torch.float64, generator=g) * 3
    eps = torch.randn(4, 1, 3, dtype=torch.float64, generator=g)
    t = torch.arange(4)
    raw = p_mean_variance(s, eps, x_t, t, learn_sigma=False, clip_denoised=False)
    x0_hat = predict_xstart_from_eps(s, x_t, t, eps)
    torch.testing.assert_close(raw["pred_xstart"], x0_hat)
    torch.testing.assert_close(raw["mean"], q_posterior_mean_variance(s, x0_hat, x_t, t)[0])
    clipped = p_mean_variance(s, eps, x_t, t, learn_sigma=False, clip_denoised=True)
    torch.testing.assert_close(clipped["pred_xstart"], x0_hat.clamp(-1, 1))
    assert torch.equal(clipped["eps"], eps)


def test_p_mean_variance_checks_channels(tiny_schedule):
    x_t = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ConfigError, match="learn_sigma=True"):
        p_mean_variance(tiny_schedule, torch.zeros(2, 3, 4, 4), x_t, torch.zeros(2).long(),
                        learn_sigma=True)


def test_float32_inputs_stay_float32(linear_1000):
    x_t = torch.zeros(2, 3, 4, 4)
    out = p_mean_variance(linear_1000, torch.zeros(2, 6, 4, 4, dtype=torch.float16), x_t,
                          torch.tensor([3, 900]), learn_sigma=True)
    assert all(v.dtype == torch.float32 for v in out.values())
