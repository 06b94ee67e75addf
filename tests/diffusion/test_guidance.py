"""Classifier guidance: analytic gradient of a linear classifier, Algorithms 1 and 2, scale 0."""

import pytest
import torch

from gdm.diffusion import (
    build_schedule,
    classifier_guidance,
    ddim_sample,
    ddim_step,
    ddpm_sample,
    ddpm_step,
    dpmpp2m_sample,
    guidance_active,
    sample_generators,
)

C, H, W, K = 2, 3, 3, 4


def _linear_classifier(seed=0):
    """logits = W x (flattened); grad_x log_softmax(Wx)[y] = W[y] - softmax(Wx) @ W."""
    weight = torch.randn(K, C * H * W, generator=torch.Generator().manual_seed(seed))
    calls = []

    def classifier_fn(x, t_model):
        if t_model is not None:
            calls.append(t_model.tolist())
        return x.flatten(1) @ weight.T

    def analytic_grad(x, y):
        p = torch.softmax(x.flatten(1) @ weight.T, dim=-1)
        return (weight[y] - p @ weight).reshape(x.shape)

    return classifier_fn, analytic_grad, calls


def _model(learn_sigma):
    def model_fn(x_t, t_model):
        eps = 0.5 * torch.tanh(x_t) + t_model.reshape(-1, 1, 1, 1) / 2000
        if learn_sigma:
            return torch.cat([eps, torch.tanh(2 * x_t)], dim=1)
        return eps

    return model_fn


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(3, C, H, W, generator=g)
    noise = torch.randn(3, C, H, W, generator=g)
    return x_t, noise, torch.tensor([0, 3, 1])


def test_cond_fn_is_scaled_analytic_gradient():
    classifier_fn, analytic_grad, calls = _linear_classifier()
    x, _, y = _batch()
    cond_fn = classifier_guidance(classifier_fn, 2.5, y)
    with torch.no_grad():  # samplers run under no_grad; guidance must still differentiate
        got = cond_fn(x, torch.tensor([7, 7, 7]))
    torch.testing.assert_close(got, 2.5 * analytic_grad(x, y))
    assert calls == [[7, 7, 7]]
    assert got.dtype == torch.float32
    # the gradient ascends log p(y|x): a small step raises it
    logp = torch.log_softmax(classifier_fn(x, None), -1)[torch.arange(3), y]
    logp2 = torch.log_softmax(classifier_fn(x + 1e-3 * got, None), -1)[torch.arange(3), y]
    assert bool((logp2 >= logp).all()) and bool((logp2 > logp).any())


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_ddpm_step_mean_shift_is_scale_sigma_grad(learn_sigma):
    """Algorithm 1: mu' = mu + s * Sigma * grad log p(y|x_t), gradient at x_t."""
    s = build_schedule("linear", 1000, "50")
    classifier_fn, analytic_grad, calls = _linear_classifier()
    x, noise, y = _batch()
    t = torch.full((3,), 30)
    scale = 3.0
    kw = {"noise": noise, "learn_sigma": learn_sigma, "clip_denoised": False}
    plain = ddpm_step(_model(learn_sigma), s, x, t, **kw)
    guided = ddpm_step(_model(learn_sigma), s, x, t, **kw,
                       cond_fn=classifier_guidance(classifier_fn, scale, y))
    expected_shift = scale * plain["variance"] * analytic_grad(x, y)
    torch.testing.assert_close(guided["mean"] - plain["mean"], expected_shift,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided["sample"] - plain["sample"], expected_shift,
                               atol=1e-5, rtol=1e-4)
    assert calls == [[s.timestep_map[30].item()] * 3]  # the classifier sees original timesteps


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_ddim_step_eps_shift_is_minus_sqrt_one_minus_abar_scale_grad(learn_sigma):
    """Algorithm 2: eps' = eps - sqrt(1 - abar_t) * s * grad log p(y|x_t)."""
    s = build_schedule("cosine", 1000, "ddim25")
    classifier_fn, analytic_grad, _ = _linear_classifier()
    x, _, y = _batch()
    t = torch.full((3,), 12)
    scale = 4.0
    kw = {"noise": None, "learn_sigma": learn_sigma, "clip_denoised": False}
    plain = ddim_step(_model(learn_sigma), s, x, t, **kw)
    guided = ddim_step(_model(learn_sigma), s, x, t, **kw,
                       cond_fn=classifier_guidance(classifier_fn, scale, y))
    abar = s.alphas_cumprod[12].item()
    abar_prev = s.alphas_cumprod[11].item()
    d_eps = -((1 - abar) ** 0.5) * scale * analytic_grad(x, y)
    torch.testing.assert_close(guided["eps"] - plain["eps"], d_eps, atol=1e-5, rtol=1e-4)
    # x0' = (x_t - sqrt(1-abar) eps') / sqrt(abar); x_{t-1} = sqrt(abar') x0' + sqrt(1-abar') eps'
    d_x0 = -((1 - abar) ** 0.5) / abar**0.5 * d_eps
    torch.testing.assert_close(guided["pred_xstart"] - plain["pred_xstart"], d_x0,
                               atol=1e-5, rtol=1e-4)
    d_sample = abar_prev**0.5 * d_x0 + (1 - abar_prev) ** 0.5 * d_eps
    torch.testing.assert_close(guided["sample"] - plain["sample"], d_sample,
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m"])
def test_scale_zero_is_bit_identical_to_no_guidance(sampler):
    s = build_schedule("linear", 1000, "20")
    classifier_fn, _, calls = _linear_classifier()
    y = torch.tensor([0, 1, 2])
    zero = classifier_guidance(classifier_fn, 0.0, y)
    assert not guidance_active(zero) and not guidance_active(None)
    assert guidance_active(classifier_guidance(classifier_fn, 1.0, y))

    def run(cond_fn, seed=5):
        kw = {"generators": sample_generators(seed, range(3)), "cond_fn": cond_fn,
                  "learn_sigma": True}
        if sampler == "ddpm":
            return ddpm_sample(_model(True), s, (3, C, H, W), **kw)
        if sampler == "dpmpp2m":
            return dpmpp2m_sample(_model(True), s, (3, C, H, W), **kw)
        return ddim_sample(_model(True), s, (3, C, H, W), eta=0.5, **kw)

    none = run(None)
    assert torch.equal(run(zero), none)
    assert calls == []  # scale 0 never evaluates the classifier
    guided = run(classifier_guidance(classifier_fn, 1.0, y))
    assert not torch.equal(guided, none)
    assert len(calls) == 20


def test_guidance_raises_classifier_probability_of_the_label():
    """End to end: strong guidance makes the linear classifier prefer y on the samples."""
    s = build_schedule("linear", 1000, "25")
    classifier_fn, _, _ = _linear_classifier(seed=3)
    y = torch.tensor([0, 1, 2, 3] * 4)
    gens = sample_generators(9, range(16))
    out = ddim_sample(_model(False), s, (16, C, H, W), generators=gens, learn_sigma=False,
                      cond_fn=classifier_guidance(classifier_fn, 10.0, y))
    plain = ddim_sample(_model(False), s, (16, C, H, W), generators=sample_generators(9, range(16)),
                        learn_sigma=False)
    acc_guided = (classifier_fn(out, None).argmax(-1) == y).float().mean().item()
    acc_plain = (classifier_fn(plain, None).argmax(-1) == y).float().mean().item()
    assert acc_guided > acc_plain and acc_guided >= 0.75
