"""normal_kl, the discretized decoder likelihood, and L_simple / hybrid / kl losses by hand."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from gdm.diffusion import (
    build_schedule,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    training_losses,
)
from gdm.errors import ConfigError

LN2 = math.log(2.0)


def test_normal_kl_closed_forms():
    z = torch.zeros(())
    assert normal_kl(z, z, z, z).item() == 0.0
    # KL(N(0,1) || N(1,1)) = 1/2
    assert normal_kl(z, z, z + 1, z).item() == pytest.approx(0.5)
    # KL(N(0, s1^2) || N(0, s2^2)) = log(s2/s1) + s1^2 / (2 s2^2) - 1/2
    s1, s2 = 0.5, 2.0
    got = normal_kl(z, torch.tensor(math.log(s1**2)), z, torch.tensor(math.log(s2**2)))
    assert got.item() == pytest.approx(math.log(s2 / s1) + s1**2 / (2 * s2**2) - 0.5, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = torch.randn(4, 50, generator=g, dtype=torch.float64)
    ref = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)


def test_discretized_likelihood_sums_to_one_over_256_levels():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.0, math.log(0.3)), (0.9, math.log(0.05)), (-0.95, 0.0)):
        ll = discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        )
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        assert bool((ll <= 0).all())


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_discretized_likelihood_matches_exact_bins():
    x = torch.tensor([-1.0, 0.2, 1.0], dtype=torch.float64)
    m = torch.tensor([-0.7, 0.1, 0.6], dtype=torch.float64)
    sigma = 0.3
    ll = discretized_gaussian_log_likelihood(x, m, torch.full_like(x, math.log(sigma)))
    d = 1 / 255
    ref = [
        math.log(_phi((-1.0 + 0.7 + d) / sigma)),
        math.log(_phi((0.1 + d) / sigma) - _phi((0.1 - d) / sigma)),
        math.log(1 - _phi((0.4 - d) / sigma)),
    ]
    assert ll.tolist() == pytest.approx(ref, abs=5e-3)


def _bayes(betas, t, x0, x_t):
    """Posterior q(x_{t-1}|x_t,x0) for scalars, by Bayes' rule (t >= 1)."""
    abar_prev = math.prod(1 - b for b in betas[:t])
    precision = 1 / (1 - abar_prev) + (1 - betas[t]) / betas[t]
    var = 1 / precision
    mean = var * (math.sqrt(abar_prev) * x0 / (1 - abar_prev)
                  + math.sqrt(1 - betas[t]) * x_t / betas[t])
    return mean, var


def _hybrid_by_hand(betas, t, x0s, noises, eps_hats, vs):
    """(mse, vb in bits) for one sample of scalar pixels, from first principles."""
    abar = math.prod(1 - b for b in betas[: t + 1])
    tilde1 = _bayes(betas, 1, 0.0, 0.0)[1]
    mse, vb = 0.0, 0.0
    for x0, n, e, v in zip(x0s, noises, eps_hats, vs, strict=True):
        x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * n
        x0_hat = (x_t - math.sqrt(1 - abar) * e) / math.sqrt(abar)
        f = (v + 1) / 2
        mse += (n - e) ** 2 / len(x0s)
        if t == 0:
            model_mean = x0_hat
            log_var = f * math.log(betas[0]) + (1 - f) * math.log(tilde1)
            sigma = math.exp(0.5 * log_var)
            d = 1 / 255
            if x0 < -0.999:
                p = _phi((x0 - model_mean + d) / sigma)
            else:
                p = _phi((x0 - model_mean + d) / sigma) - _phi((x0 - model_mean - d) / sigma)
            vb += -math.log(p) / LN2 / len(x0s)
        else:
            true_mean, true_var = _bayes(betas, t, x0, x_t)
            model_mean, _ = _bayes(betas, t, x0_hat, x_t)
            lv1 = math.log(true_var)
            lv2 = f * math.log(betas[t]) + (1 - f) * lv1
            kl = 0.5 * (-1 + lv2 - lv1 + math.exp(lv1 - lv2)
                        + (true_mean - model_mean) ** 2 * math.exp(-lv2))
            vb += kl / LN2 / len(x0s)
    return mse, vb


def _tiny_case(tiny_schedule):
    x0 = torch.tensor([[[[-1.0, 0.2]]], [[[0.5, -0.3]]]], dtype=torch.float64)
    noise = torch.tensor([[[[0.3, -1.1]]], [[[0.7, 0.4]]]], dtype=torch.float64)
    eps_hat = torch.tensor([[[[0.1, -0.9]]], [[[1.0, 0.2]]]], dtype=torch.float64)
    v = torch.tensor([[[[0.5, -0.2]]], [[[-0.6, 0.9]]]], dtype=torch.float64)
    out = torch.cat([eps_hat, v], dim=1).requires_grad_(True)
    return x0, noise, eps_hat, v, out


def test_hybrid_loss_matches_hand_computation(tiny_schedule):
    betas = [0.1, 0.2, 0.3, 0.4]
    x0, noise, eps_hat, v, out = _tiny_case(tiny_schedule)
    t = torch.tensor([0, 2])
    seen = []

    def model_fn(x_t, t_model):
        seen.append(t_model.tolist())
        return out

    terms = training_losses(tiny_schedule, model_fn, x0, t, noise=noise,
                            loss_type="hybrid", learn_sigma=True)
    assert seen == [[0, 2]]
    for i in range(2):
        mse, vb = _hybrid_by_hand(betas, int(t[i]), x0[i].flatten().tolist(),
                                  noise[i].flatten().tolist(), eps_hat[i].flatten().tolist(),
                                  v[i].flatten().tolist())
        assert terms["mse"][i].item() == pytest.approx(mse, rel=1e-12)
        tol = 5e-3 if t[i] == 0 else 1e-9  # t = 0 uses the tanh approximation of Phi
        assert terms["vb"][i].item() == pytest.approx(vb, rel=tol)
        assert terms["loss"][i].item() == pytest.approx(mse + terms["vb"][i].item(), rel=1e-12)

    # The mean is frozen inside L_vb: vb trains only the variance channels.
    terms["vb"].sum().backward()
    assert out.grad[:, :1].abs().max().item() == 0.0
    assert out.grad[:, 1:].abs().min().item() > 0.0


def test_rescaled_hybrid_scales_vb_by_T_over_1000(tiny_schedule):
    x0, noise, _, _, out = _tiny_case(tiny_schedule)
    t = torch.tensor([0, 2])
    plain = training_losses(tiny_schedule, lambda x, tm: out, x0, t, noise=noise,
                            loss_type="hybrid", learn_sigma=True)
    scaled = training_losses(tiny_schedule, lambda x, tm: out, x0, t, noise=noise,
                             loss_type="rescaled_hybrid", learn_sigma=True)
    torch.testing.assert_close(scaled["vb"], plain["vb"] * 4 / 1000)


def test_kl_loss_is_vb_through_the_mean(tiny_schedule):
    x0, noise, _, _, out = _tiny_case(tiny_schedule)
    t = torch.tensor([0, 2])
    hybrid = training_losses(tiny_schedule, lambda x, tm: out, x0, t, noise=noise,
                             loss_type="hybrid", learn_sigma=True)
    kl = training_losses(tiny_schedule, lambda x, tm: out, x0, t, noise=noise,
                         loss_type="kl", learn_sigma=True)
    torch.testing.assert_close(kl["loss"], hybrid["vb"])
    kl["loss"].sum().backward()
    assert out.grad[:, :1].abs().min().item() > 0.0


def test_mse_loss_is_mean_over_non_batch_dims():
    s = build_schedule("linear", 1000, "ddim10")
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(3, 2, 4, 4, generator=g)
    eps_hat = torch.randn(3, 2, 4, 4, generator=g)
    seen = []

    def model_fn(x_t, t_model):
        seen.append(t_model.tolist())
        return eps_hat

    terms = training_losses(s, model_fn, x0, torch.tensor([0, 5, 9]), noise=noise)
    assert seen == [[0, 500, 900]]  # the network sees original timesteps
    torch.testing.assert_close(terms["loss"], ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3)))
    assert set(terms) == {"loss", "mse"}
    torch.testing.assert_close(mean_flat(torch.ones(2, 3, 5)), torch.ones(2))


def test_loss_type_errors(tiny_schedule):
    x0 = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    args = (tiny_schedule, lambda x, t: x, x0, torch.zeros(1).long())
    with pytest.raises(ConfigError, match="l1"):
        training_losses(*args, noise=x0, loss_type="l1")
    with pytest.raises(ConfigError, match="learn_sigma"):
        training_losses(*args, noise=x0, loss_type="hybrid", learn_sigma=False)


def test_model_output_channels_must_match_learn_sigma(tiny_schedule):
    x0 = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    t = torch.zeros(2).long()
    with pytest.raises(ConfigError, match="6 channels"):
        training_losses(tiny_schedule, lambda x, tm: x, x0, t, noise=x0, loss_type="hybrid",
                        learn_sigma=True)
    with pytest.raises(ConfigError, match="3 channels"):
        training_losses(tiny_schedule, lambda x, tm: torch.cat([x, x], 1), x0, t, noise=x0)
