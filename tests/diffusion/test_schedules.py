"""Beta schedules, derived arrays and respacing (closed forms)."""

import math

import pytest
import torch

from gdm.diffusion import (
    build_schedule,
    get_named_beta_schedule,
    make_schedule,
    model_timesteps,
    respace,
    space_timesteps,
)
from gdm.errors import ConfigError


def test_linear_endpoints_and_scaling():
    b = get_named_beta_schedule("linear", 1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert b[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert bool((b[1:] > b[:-1]).all())
    b4 = get_named_beta_schedule("linear", 4000)  # scaled by 1000/T
    assert b4[0].item() == pytest.approx(2.5e-5, rel=1e-12)
    assert b4[-1].item() == pytest.approx(0.005, rel=1e-12)


def test_cosine_matches_alpha_bar_and_clips_at_0999():
    T = 1000
    b = get_named_beta_schedule("cosine", T)
    assert b.dtype == torch.float64
    assert b.max().item() == 0.999 and b[-1].item() == 0.999
    assert int((b == 0.999).sum()) == 1  # only the last step is clipped at T = 1000

    def f(t):
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    abar = torch.cumprod(1 - b, 0)
    for t in (0, 1, 250, 500, 900, 998):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_abar_monotone_decreasing_in_unit_interval(name):
    s = make_schedule(get_named_beta_schedule(name, 1000))
    abar = s.alphas_cumprod
    assert bool((abar[1:] < abar[:-1]).all())
    assert 0 < abar[-1].item() < abar[0].item() < 1
    assert s.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(s.alphas_cumprod_prev[1:], abar[:-1])


def test_unknown_schedule_names_the_value():
    with pytest.raises(ConfigError, match="quadratic"):
        get_named_beta_schedule("quadratic", 10)
    with pytest.raises(ConfigError):
        get_named_beta_schedule("linear", 0)


def test_derived_arrays_closed_form(tiny_schedule):
    s = tiny_schedule
    betas = [0.1, 0.2, 0.3, 0.4]
    abar = [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7, 0.9 * 0.8 * 0.7 * 0.6]
    abar_prev = [1.0] + abar[:-1]
    for t in range(4):
        tilde = betas[t] * (1 - abar_prev[t]) / (1 - abar[t])
        assert s.alphas_cumprod[t].item() == pytest.approx(abar[t], rel=1e-14)
        assert s.posterior_variance[t].item() == pytest.approx(tilde, abs=1e-15)
        assert s.sqrt_recipm1_alphas_cumprod[t].item() == pytest.approx(
            math.sqrt(1 / abar[t] - 1), rel=1e-14
        )
    assert s.posterior_variance[0].item() == pytest.approx(0.0, abs=1e-16)
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    assert torch.equal(s.timestep_map, torch.arange(4))
    assert s.num_timesteps == 4


def test_make_schedule_rejects_bad_betas():
    with pytest.raises(ConfigError):
        make_schedule(torch.tensor([0.1, 0.0]))
    with pytest.raises(ConfigError):
        make_schedule(torch.tensor([[0.1]]))
    with pytest.raises(ConfigError):
        make_schedule(torch.tensor([0.1, 0.2]), timestep_map=[0])


def test_space_ddim25():
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))


def test_space_ddim_impossible_names_spec():
    # strides of 10 give 10, 5, 4, 3, 2 or 1 steps: never 7
    with pytest.raises(ConfigError, match="ddim7"):
        space_timesteps(10, "ddim7")
    with pytest.raises(ConfigError, match="ddimx"):
        space_timesteps(10, "ddimx")


def test_space_fractional_includes_first_and_last():
    kept = space_timesteps(1000, "10")
    assert len(kept) == 10 and kept[0] == 0 and kept[-1] == 999
    assert kept == [round(k * 999 / 9) for k in range(10)]
    assert space_timesteps(1000, "250")[-1] == 999 and len(space_timesteps(1000, "250")) == 250
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(1000, "") == list(range(1000))


def test_space_sections_counts():
    kept = space_timesteps(1000, "90,60,60,20,20")
    assert len(kept) == 250
    counts = [sum(lo <= k < lo + 200 for k in kept) for lo in range(0, 1000, 200)]
    assert counts == [90, 60, 60, 20, 20]
    assert kept[0] == 0 and 199 in kept and 999 in kept
    # uneven split: 10 steps into 3 sections of 4, 3, 3
    assert space_timesteps(10, "2,1,2") == [0, 3, 4, 7, 9]


@pytest.mark.parametrize("spec", ["abc", "5,x", "2000", "0", "-3,5", "1,2,3,4,5,6,7,8,9,10,11"])
def test_space_invalid_specs_name_spec(spec):
    with pytest.raises(ConfigError, match="respacing"):
        space_timesteps(10, spec)


def test_respaced_abar_equals_original_at_kept_steps():
    betas = get_named_beta_schedule("cosine", 1000)
    base = make_schedule(betas)
    kept = space_timesteps(1000, "ddim25")
    s = respace(betas, kept)
    assert s.num_timesteps == 25
    assert torch.equal(s.timestep_map, torch.tensor(kept))
    torch.testing.assert_close(s.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12, atol=0)
    assert s.betas[0].item() == pytest.approx(betas[0].item(), rel=1e-12)
    # beta'_i = 1 - abar_{k_i} / abar_{k_{i-1}}
    abar = base.alphas_cumprod
    assert s.betas[3].item() == pytest.approx(1 - abar[120].item() / abar[80].item(), rel=1e-12)


def test_respace_composes_timestep_maps():
    base = build_schedule("linear", 1000, "100")
    twice = respace(base, [0, 50, 99])
    assert twice.timestep_map.tolist() == [base.timestep_map[i].item() for i in (0, 50, 99)]
    full = make_schedule(get_named_beta_schedule("linear", 1000))
    torch.testing.assert_close(
        twice.alphas_cumprod, full.alphas_cumprod[twice.timestep_map], rtol=1e-12, atol=0
    )
    with pytest.raises(ConfigError):
        respace(base, [100])


def test_model_timesteps_maps_to_original():
    s = build_schedule("linear", 1000, "ddim25")
    t = torch.tensor([0, 1, 24])
    assert model_timesteps(s, t).tolist() == [0, 40, 960]
    assert build_schedule("linear", 1000).timestep_map.tolist() == list(range(1000))
