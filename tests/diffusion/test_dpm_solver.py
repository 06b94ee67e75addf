"""DPM-Solver++(2M) (Lu et al. 2022) against closed forms, and the samplers' x_T / noise contract.

Gaussian toy: for x_0 ~ N(mu, v) (elementwise) the optimal eps is linear in x_t and the
probability-flow ODE keeps z = (x_t - alpha_t mu) / sqrt(alpha_t^2 v + sigma_t^2) constant, so
the exact ODE state at any t is known. Every sampler ends with the same deterministic x_0 step
from index 0, so the reference is that step applied to the exact state at index 0; the error of
a solver is then proportional to its ODE error, which must shrink like 1/N (DDIM, first order)
or 1/N^2 (2M, second order) as the number of steps N doubles. Computed in float64 (x_T float64).
"""

import itertools
import math

import pytest
import torch

from gdm.diffusion import (
    build_schedule,
    ddim_sample,
    ddpm_sample,
    ddpm_step,
    dpmpp2m_sample,
    get_named_beta_schedule,
    make_schedule,
    randn_like_per_sample,
    sample_generators,
)

MU, V = 0.3, 0.25


def _gaussian(sched: str, mu: float = MU, v: float = V):
    """(base schedule, model_fn) with the exact eps of x_0 ~ N(mu, v)."""
    base = make_schedule(get_named_beta_schedule(sched, 1000))

    def model_fn(x, t_model):
        abar = base.alphas_cumprod[t_model].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - abar).sqrt() * (x - abar.sqrt() * mu) / (abar * v + 1 - abar)

    return base, model_fn


def _ode_reference(base, x_T, t_first: int, mu: float, v: float):
    """The x_0 step from index 0 applied to the exact ODE state there: mu + alpha_0 v z / S_0."""
    abar_T, abar_0 = float(base.alphas_cumprod[t_first]), float(base.alphas_cumprod[0])
    z = (x_T - math.sqrt(abar_T) * mu) / math.sqrt(abar_T * v + 1 - abar_T)
    return mu + math.sqrt(abar_0) * v * z / math.sqrt(abar_0 * v + 1 - abar_0)


def _errors(sampler, sched, steps, model_fn, base, mu, v, cond_fn=None):
    n = 41
    x_T = torch.linspace(-2.5, 2.5, n, dtype=torch.float64).reshape(n, 1)
    errs = []
    for N in steps:
        s = build_schedule(sched, 1000, str(N))
        out = sampler(model_fn, s, (n, 1), generators=sample_generators(0, range(n)), x_T=x_T,
                      cond_fn=cond_fn, learn_sigma=False, clip_denoised=False)
        assert out.dtype == torch.float64
        ref = _ode_reference(base, x_T, int(s.timestep_map[-1]), mu, v)
        errs.append(float((out - ref).abs().max()))
    return errs


def _orders(errs):
    return [math.log2(a / b) for a, b in itertools.pairwise(errs)]


@pytest.mark.parametrize("sched", ["linear", "cosine"])
def test_order_of_convergence_on_gaussian_data(sched):
    base, model_fn = _gaussian(sched)
    steps = (20, 40, 80, 160)
    ddim = _errors(ddim_sample, sched, steps, model_fn, base, MU, V)
    dpm = _errors(dpmpp2m_sample, sched, steps, model_fn, base, MU, V)
    assert all(0.9 < p < 1.1 for p in _orders(ddim)), ddim  # first order
    assert all(p > 1.5 for p in _orders(dpm)) and _orders(dpm)[-1] > 1.9, dpm  # second order
    assert dpm[-1] < ddim[-1] / 2.5


def test_guided_order_of_convergence_to_the_posterior_ode():
    """Gaussian prior N(mu, v), Gaussian likelihood y | x_0 ~ N(x_0, w) observed at c.

    The noisy classifier is p_t(c | x_t) = N(c; E[x_0|x_t], Var[x_0|x_t] + w), so cond_fn (scale 1)
    is its closed-form gradient and guided sampling solves the ODE of the posterior
    N(mu_p, v_p), v_p = v w / (v + w), mu_p = (mu w + c v) / (v + w), whose solution is known.
    """
    sched, w, c = "cosine", 0.1, -0.6
    base, model_fn = _gaussian(sched)
    abar_all = base.alphas_cumprod

    def cond_fn(x, t_model):
        abar = abar_all[t_model].to(x.dtype).reshape(-1, 1)
        s2 = abar * V + 1 - abar
        mean = MU + abar.sqrt() * V * (x - abar.sqrt() * MU) / s2
        var = V * (1 - abar) / s2
        return (c - mean) / (var + w) * abar.sqrt() * V / s2

    cond_fn.scale = 1.0
    mu_p, v_p = (MU * w + c * V) / (V + w), V * w / (V + w)
    steps = (20, 40, 80, 160)
    ddim = _errors(ddim_sample, sched, steps, model_fn, base, mu_p, v_p, cond_fn)
    dpm = _errors(dpmpp2m_sample, sched, steps, model_fn, base, mu_p, v_p, cond_fn)
    assert all(0.9 < p < 1.1 for p in _orders(ddim)), ddim
    assert _orders(dpm)[-1] > 1.9 and dpm[-1] < ddim[-1] / 2.5, dpm
    # and the guidance really moved the samples: the unguided ODE ends elsewhere
    unguided = _errors(dpmpp2m_sample, sched, steps[-1:], model_fn, base, mu_p, v_p)
    assert unguided[0] > 100 * dpm[-1]


def test_two_steps_are_ddim():
    """No history on the first step and first order on the last: with two steps 2M is DDIM."""
    _, model_fn = _gaussian("linear")
    s = build_schedule("linear", 1000, "2")
    x_T = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    kw = {"generators": sample_generators(3, range(5)), "learn_sigma": False, "clip_denoised": False, "x_T": x_T}
    a = dpmpp2m_sample(model_fn, s, (5, 3), **kw)
    b = ddim_sample(model_fn, s, (5, 3), **kw)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(dpmpp2m_sample(model_fn, build_schedule("linear", 1000, "3"), (5, 3), **kw),
                              ddim_sample(model_fn, build_schedule("linear", 1000, "3"), (5, 3), **kw))


def test_model_sees_original_timesteps_and_sample_i_is_batch_independent():
    s = build_schedule("cosine", 1000, "ddim10")
    seen, ticks = [], []

    def model_fn(x_t, t_model):
        seen.append(t_model.tolist())
        return torch.tanh(x_t) * (0.5 + t_model.reshape(-1, 1, 1).to(x_t.dtype) / 1000)

    full = dpmpp2m_sample(model_fn, s, (4, 2, 3), generators=sample_generators(5, range(4)),
                          learn_sigma=False, progress=lambda k, n: ticks.append((k, n)))
    assert seen == [[t] * 4 for t in range(900, -1, -100)]
    assert ticks == [(k, 10) for k in range(1, 11)]
    part = dpmpp2m_sample(model_fn, s, (2, 2, 3), generators=sample_generators(5, [2, 3]),
                          learn_sigma=False)
    torch.testing.assert_close(part, full[2:], rtol=0, atol=1e-6)
    assert full.abs().max() <= 1.0


def test_single_point_data_is_recovered(oracle_eps_model):
    """x_theta is constant for a one-point dataset: every solver lands on it."""
    base = make_schedule(get_named_beta_schedule("cosine", 1000))
    x0 = torch.tensor([0.9, -0.5, 0.0, 0.25]).reshape(1, 1, 2, 2)
    for spec in ("7", "ddim25"):
        out = dpmpp2m_sample(oracle_eps_model(x0, base.alphas_cumprod, True), build_schedule("cosine", 1000, spec),
                             (3, 1, 2, 2), generators=sample_generators(0, range(3)), learn_sigma=True)
        torch.testing.assert_close(out, x0.expand(3, 1, 2, 2), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------- the sampler contract


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample, dpmpp2m_sample])
def test_given_x_T_equals_the_default_draw(sampler):
    """Passing the x_T the generators would draw gives the same samples (step noise included)."""
    s = build_schedule("linear", 1000, "8")
    _, model_fn = _gaussian("linear")
    shape = (3, 2, 2)
    default = sampler(model_fn, s, shape, generators=sample_generators(9, range(3)), learn_sigma=False)
    x_T = randn_like_per_sample(sample_generators(9, range(3)), shape[1:])
    given = sampler(model_fn, s, shape, generators=sample_generators(9, range(3)), learn_sigma=False, x_T=x_T)
    assert torch.equal(default, given)
    other = sampler(model_fn, s, shape, generators=sample_generators(9, range(3)), learn_sigma=False,
                    x_T=x_T.flip(0))
    assert not torch.allclose(other, default)
    with pytest.raises(ValueError, match="x_T must be a float tensor of shape"):
        sampler(model_fn, s, shape, generators=sample_generators(9, range(3)), learn_sigma=False,
                x_T=x_T[:2])


def test_ddpm_step_computes_the_mean_without_noise():
    s = build_schedule("linear", 1000, "10")
    _, model_fn = _gaussian("linear")
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 5)
    out = ddpm_step(model_fn, s, x, t, learn_sigma=False)
    assert "sample" not in out and out["mean"].shape == x.shape
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    noisy = ddpm_step(model_fn, s, x, t, noise=z, learn_sigma=False)
    torch.testing.assert_close(noisy["mean"], out["mean"])
    torch.testing.assert_close(noisy["sample"], out["mean"] + out["log_variance"].mul(0.5).exp() * z)
    last = ddpm_step(model_fn, s, x, torch.zeros(4, dtype=torch.int64), learn_sigma=False)
    assert torch.equal(last["sample"], last["mean"])
