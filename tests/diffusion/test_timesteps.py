"""Training-timestep samplers: uniform and loss-second-moment importance sampling."""

import pytest
import torch

from gdm.diffusion import LossSecondMomentSampler, UniformSampler, create_timestep_sampler
from gdm.errors import CheckpointError, ConfigError


def test_uniform_sampler():
    sampler = UniformSampler(7)
    t, w = sampler.sample(5000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and int(t.min()) == 0 and int(t.max()) == 6
    assert torch.equal(w, torch.ones(5000))
    t2, _ = sampler.sample(5000, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)
    counts = torch.bincount(t, minlength=7).double() / 5000
    assert (counts - 1 / 7).abs().max().item() < 0.02


def _warm(sampler, per_t_losses):
    for _ in range(sampler.history):
        t = torch.arange(sampler.num_timesteps)
        sampler.update(t, torch.tensor(per_t_losses))


def test_lsm_uniform_until_every_t_has_full_history():
    sampler = LossSecondMomentSampler(4)
    _warm(sampler, [1.0, 2.0, 3.0, 4.0])
    assert sampler.warmed_up()
    cold = LossSecondMomentSampler(4)
    for _ in range(10):
        cold.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]))  # t = 3 never seen
    cold.update(torch.tensor([3] * 9), torch.ones(9))
    assert not cold.warmed_up()
    torch.testing.assert_close(cold.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    _, w = cold.sample(10, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(10))
    cold.update(torch.tensor([3]), torch.tensor([1.0]))
    assert cold.warmed_up()


def test_lsm_probabilities_closed_form():
    sampler = LossSecondMomentSampler(4, uniform_prob=0.001)
    _warm(sampler, [1.0, 2.0, 3.0, 4.0])
    # sqrt(E[L^2]) = L for constant histories; p = 0.999 * L / sum(L) + 0.001 / 4
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) / 10 * 0.999 + 0.001 / 4
    torch.testing.assert_close(sampler.probabilities(), expected)
    t, w = sampler.sample(40000, "cpu", torch.Generator().manual_seed(1))
    freq = torch.bincount(t, minlength=4).double() / 40000
    assert (freq - expected).abs().max().item() < 0.01
    torch.testing.assert_close(w.double(), 1 / (4 * expected[t]), rtol=1e-6, atol=0)
    # importance weights keep the loss estimate unbiased: E_p[w L_t] = mean_t L_t
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert (w * losses[t]).mean().item() == pytest.approx(2.5, rel=0.02)


def test_lsm_second_moment_and_rolling_history():
    sampler = LossSecondMomentSampler(2, history=3, uniform_prob=0.0)
    for loss in (3.0, 4.0, 100.0):
        sampler.update(torch.tensor([0]), torch.tensor([loss]))
    for loss in (1.0, 1.0, 1.0, 2.0):  # 4 losses: the first is dropped
        sampler.update(torch.tensor([1]), torch.tensor([loss]))
    assert sampler.loss_history[1].tolist() == [1.0, 1.0, 2.0]
    sampler.update(torch.tensor([0]), torch.tensor([0.0]))  # drops 3.0
    assert sampler.loss_history[0].tolist() == [4.0, 100.0, 0.0]
    rms0 = ((16 + 10000 + 0) / 3) ** 0.5
    rms1 = ((1 + 1 + 4) / 3) ** 0.5
    torch.testing.assert_close(
        sampler.probabilities(),
        torch.tensor([rms0, rms1], dtype=torch.float64) / (rms0 + rms1),
    )


def test_lsm_state_dict_round_trip_and_validation(tmp_path):
    sampler = LossSecondMomentSampler(5)
    _warm(sampler, [1.0, 2.0, 3.0, 4.0, 5.0])
    torch.save(sampler.state_dict(), tmp_path / "s.pt")
    restored = LossSecondMomentSampler(5)
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert restored.warmed_up()
    torch.testing.assert_close(restored.probabilities(), sampler.probabilities())
    with pytest.raises(CheckpointError, match="loss_history"):
        LossSecondMomentSampler(6).load_state_dict(sampler.state_dict())
    with pytest.raises(CheckpointError):
        restored.load_state_dict({})


def test_create_timestep_sampler():
    assert isinstance(create_timestep_sampler("uniform", 10), UniformSampler)
    assert isinstance(create_timestep_sampler("loss-second-moment", 10), LossSecondMomentSampler)
    with pytest.raises(ConfigError, match="importance"):
        create_timestep_sampler("importance", 10)
