"""Classifier-free guidance (Ho & Salimans 2022): the model-function wrapper, composed outside the samplers."""

import pytest
import torch

from gdm.diffusion import (
    build_schedule,
    classifier_free_guidance,
    ddim_sample,
    ddpm_sample,
    dpmpp2m_sample,
    sample_generators,
)

C, H, W, NULL = 2, 3, 3, 4


def _labelled_model(learn_sigma: bool, calls: list | None = None):
    """A deterministic stand-in for a conditional network: eps depends on x, t and the label (null included)."""

    def model(x, t, y):
        if calls is not None:
            calls.append((len(x), y.tolist()))
        eps = torch.tanh(x) * (1 + y.reshape(-1, 1, 1, 1)) / 5 + t.reshape(-1, 1, 1, 1) / 3000
        if learn_sigma:
            return torch.cat([eps, torch.sin(x + y.reshape(-1, 1, 1, 1))], dim=1)
        return eps

    return model


def _x(seed=1, n=3):
    return torch.randn(n, C, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("w", [0.5, 1.0, 3.0])
def test_combination_is_exactly_the_formula(learn_sigma, w):
    """eps~ = (1 + w) eps(x, y) - w eps(x, null); the variance channels are the conditional pass's."""
    calls = []
    model = _labelled_model(learn_sigma, calls)
    x, t, y = _x(), torch.tensor([5, 5, 5]), torch.tensor([0, 3, 1])
    got = classifier_free_guidance(model, y, NULL, w)(x, t)
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, NULL))
    assert torch.equal(got[:, :C], (1 + w) * cond[:, :C] - w * uncond[:, :C])
    if learn_sigma:
        assert torch.equal(got[:, C:], cond[:, C:])
    assert got.shape == cond.shape
    assert calls[0] == (6, [0, 3, 1, NULL, NULL, NULL])  # one batched call: [x; x] with labels [y; null]


def test_guidance_moves_eps_away_from_the_unconditional_prediction():
    model = _labelled_model(False)
    x, t, y = _x(), torch.tensor([7, 7, 7]), torch.tensor([2, 2, 2])
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, NULL))
    for w in (1.0, 2.0):  # eps~ - eps_c = w (eps_c - eps_u): linear in w
        torch.testing.assert_close(classifier_free_guidance(model, y, NULL, w)(x, t) - cond, w * (cond - uncond))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m"])
def test_w_zero_is_bit_identical_to_unguided_conditional_sampling(sampler):
    s = build_schedule("cosine", 1000, "10")
    calls = []
    model = _labelled_model(True, calls)
    y = torch.tensor([0, 1, 2])

    def run(model_fn):
        kw = {"generators": sample_generators(3, range(3)), "learn_sigma": True}
        if sampler == "ddpm":
            return ddpm_sample(model_fn, s, (3, C, H, W), **kw)
        if sampler == "dpmpp2m":  # the guided model function goes through the solver like any other
            return dpmpp2m_sample(model_fn, s, (3, C, H, W), **kw)
        return ddim_sample(model_fn, s, (3, C, H, W), eta=0.5, **kw)

    plain = run(lambda x, t: model(x, t, y))
    calls.clear()
    zero = run(classifier_free_guidance(model, y, NULL, 0.0))
    assert torch.equal(zero, plain)
    assert all(n == 3 and NULL not in labels for n, labels in calls)  # w = 0 never evaluates the null label
    assert not torch.equal(run(classifier_free_guidance(model, y, NULL, 1.0)), plain)
