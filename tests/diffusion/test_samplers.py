"""DDPM / DDIM samplers: oracle model, timestep mapping, determinism, DDIM(eta=1) == DDPM."""

import math

import pytest
import torch

from gdm.diffusion import (
    build_schedule,
    ddim_sample,
    ddpm_sample,
    get_named_beta_schedule,
    make_schedule,
    sample_generators,
)


def _smooth_model(learn_sigma=False):
    """A deterministic elementwise 'network' that depends on x_t and t."""

    def model_fn(x_t, t_model):
        tt = t_model.to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1))) / 1000
        eps = torch.tanh(1.3 * x_t) * (0.5 + tt) + 0.1 * torch.sin(3 * x_t)
        if learn_sigma:
            return torch.cat([eps, torch.tanh(x_t - tt)], dim=1)
        return eps

    return model_fn


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("respacing", ["", "50", "ddim25"])
def test_oracle_single_point_is_recovered(oracle_eps_model, respacing, learn_sigma):
    base = make_schedule(get_named_beta_schedule("cosine", 1000))
    s = build_schedule("cosine", 1000, respacing)
    x0 = torch.tensor([0.9, -0.5, 0.0, 0.25]).reshape(1, 1, 2, 2)
    model = oracle_eps_model(x0, base.alphas_cumprod, learn_sigma)
    shape = (3, 1, 2, 2)
    if respacing != "":
        out = ddpm_sample(model, s, shape, generators=sample_generators(0, range(3)),
                          learn_sigma=learn_sigma)
        torch.testing.assert_close(out, x0.expand(shape), atol=1e-4, rtol=0)
    for eta in (0.0, 1.0):
        out = ddim_sample(model, s, shape, generators=sample_generators(0, range(3)), eta=eta,
                          learn_sigma=learn_sigma)
        torch.testing.assert_close(out, x0.expand(shape), atol=1e-4, rtol=0)


def test_model_and_progress_see_original_timesteps():
    s = build_schedule("linear", 1000, "ddim10")
    for sampler in (ddpm_sample, ddim_sample):
        seen, ticks = [], []

        def model_fn(x_t, t_model, seen=seen):
            seen.append(t_model.tolist())
            return torch.zeros_like(x_t)

        sampler(model_fn, s, (2, 1, 2), generators=sample_generators(1, [0, 1]),
                learn_sigma=False, progress=lambda k, n, ticks=ticks: ticks.append((k, n)))
        assert seen == [[t, t] for t in range(900, -1, -100)]
        assert ticks == [(k, 10) for k in range(1, 11)]


def test_ddim_eta0_deterministic_given_generators():
    s = build_schedule("linear", 1000, "20")
    model = _smooth_model()
    a = ddim_sample(model, s, (4, 2, 3), generators=sample_generators(7, range(4)),
                    learn_sigma=False)
    b = ddim_sample(model, s, (4, 2, 3), generators=sample_generators(7, range(4)),
                    learn_sigma=False)
    c = ddim_sample(model, s, (4, 2, 3), generators=sample_generators(8, range(4)),
                    learn_sigma=False)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.abs().max() <= 1.0


def test_ddim_eta1_equals_ddpm_with_posterior_variance():
    """DDIM eq. 16: eta = 1 gives sigma^2 = beta_tilde, i.e. DDPM with fixed-small variance."""
    s = build_schedule("linear", 1000, "30")
    model = _smooth_model()
    shape = (5, 2, 3)
    ddpm = ddpm_sample(model, s, shape, generators=sample_generators(3, range(5)),
                       learn_sigma=False, sigma_small=True, clip_denoised=False)
    ddim = ddim_sample(model, s, shape, generators=sample_generators(3, range(5)), eta=1.0,
                       learn_sigma=False, clip_denoised=False)
    torch.testing.assert_close(ddim, ddpm, atol=1e-5, rtol=1e-5)
    ddpm_large = ddpm_sample(model, s, shape, generators=sample_generators(3, range(5)),
                             learn_sigma=False, clip_denoised=False)
    assert not torch.allclose(ddpm_large, ddpm, atol=1e-3)


def _predicted_variance(base, kept, v, sampler):
    """Var(x_0) of the chain x_{t-1} = a_t x_t + b_t z for the linear optimal-eps model.

    Computed step by step from DDPM eq. 7 / DDIM eq. 12 in plain float64 Python.
    """
    abar_all = base.alphas_cumprod.tolist()
    var = 1.0  # x_T ~ N(0, 1)
    for k in reversed(range(len(kept))):
        abar = abar_all[kept[k]]
        abar_prev = abar_all[kept[k - 1]] if k > 0 else 1.0
        beta = 1 - abar / abar_prev
        c = math.sqrt(1 - abar) / (abar * v + 1 - abar)  # eps = c x_t
        x0_coef = (1 - math.sqrt(1 - abar) * c) / math.sqrt(abar)  # x0_hat = x0_coef x_t
        if sampler == "ddpm":
            a = (math.sqrt(abar_prev) * beta * x0_coef
                 + math.sqrt(1 - beta) * (1 - abar_prev)) / (1 - abar)
            b2 = beta * (1 - abar_prev) / (1 - abar)
        else:
            a = math.sqrt(abar_prev) * x0_coef + math.sqrt(1 - abar_prev) * c
            b2 = 0.0
        var = a * a * var + b2
    return var


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_gaussian_data_statistics(sampler):
    """For x0 ~ N(0, v) the optimal eps is linear: eps*(x_t) = sqrt(1-abar) x_t / (abar v + 1-abar),
    so each step is x_{t-1} = a_t x_t + b_t z and Var(x_0) follows a scalar recursion.
    The samples (8 x 2000 independent values: the model is elementwise) must match it.
    """
    v = 0.25
    base = make_schedule(get_named_beta_schedule("linear", 1000))
    s = build_schedule("linear", 1000, "100")

    def model_fn(x_t, t_model):
        abar = base.alphas_cumprod[t_model].to(x_t.dtype).reshape(-1, 1)
        return (1 - abar).sqrt() * x_t / (abar * v + 1 - abar)

    n = 16_000
    kwargs = {"generators": sample_generators(11, range(8)), "learn_sigma": False,
                  "clip_denoised": False}
    if sampler == "ddpm":
        x = ddpm_sample(model_fn, s, (8, n // 8), sigma_small=True, **kwargs)
    else:
        x = ddim_sample(model_fn, s, (8, n // 8), **kwargs)
    predicted = _predicted_variance(base, s.timestep_map.tolist(), v, sampler)
    # 100 steps with fixed variances underestimate v (DDPM most): the recursion says by how much
    assert 0.8 * v < predicted < v
    assert abs(x.mean().item()) < 4 * math.sqrt(v / n)
    assert x.var().item() == pytest.approx(predicted, rel=0.05)


def test_sampler_input_checks():
    s = build_schedule("cosine", 10)
    with pytest.raises(ValueError, match="one generator per sample"):
        ddpm_sample(_smooth_model(), s, (3, 1), generators=sample_generators(0, [0]),
                    learn_sigma=False)
