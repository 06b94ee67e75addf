"""Per-sample generators: a sample does not depend on the batch it is generated in."""

import pytest
import torch

from gdm.diffusion import (
    build_schedule,
    ddim_sample,
    ddpm_sample,
    randn_like_per_sample,
    sample_generators,
    sample_seed,
)
from gdm.diffusion.noise import _splitmix64


def test_sample_seed_is_deterministic_63_bit_and_distinct():
    seeds = {sample_seed(s, i) for s in range(4) for i in range(256)}
    assert len(seeds) == 4 * 256
    assert all(0 <= x < 2**63 for x in seeds)
    assert sample_seed(0, 5) == sample_seed(0, 5)
    assert sample_seed(1, 0) != sample_seed(0, 1)
    with pytest.raises(ValueError):
        sample_seed(-1, 0)


def test_sample_seed_golden_values():
    # Pinned: changing the hash would silently change every published sample.
    assert sample_seed(0, 0) == 6017775124710473527
    assert sample_seed(2021, 7) == 4967276167645336655


def test_splitmix64_reference_output():
    # The first output of SplitMix64 from state 0 (Vigna's reference implementation).
    assert _splitmix64(0) == 0xE220A8397B1DCDAF


def test_rows_come_from_their_own_generator():
    gens = sample_generators(42, [3, 9])
    noise = randn_like_per_sample(gens, (2, 5), torch.float64, "cpu")
    assert noise.shape == (2, 2, 5) and noise.dtype == torch.float64
    for row, i in zip(noise, (3, 9), strict=True):
        ref = torch.randn(2, 5, generator=torch.Generator().manual_seed(sample_seed(42, i)))
        assert torch.equal(row, ref.double())


def _model(learn_sigma):
    def model_fn(x_t, t_model):
        eps = 0.4 * torch.tanh(x_t) + 0.1 * torch.sin(t_model.reshape(-1, 1, 1, 1) * 0.01 + x_t)
        return torch.cat([eps, torch.tanh(x_t)], dim=1) if learn_sigma else eps

    return model_fn


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta0", "ddim_eta0.7"])
def test_samples_independent_of_batch_composition(sampler):
    s = build_schedule("cosine", 1000, "15")
    seed, per = 123, (2, 4, 4)

    def run(indices):
        kw = {"generators": sample_generators(seed, indices), "learn_sigma": True}
        shape = (len(indices), *per)
        if sampler == "ddpm":
            return ddpm_sample(_model(True), s, shape, **kw)
        return ddim_sample(_model(True), s, shape, eta=float(sampler[len("ddim_eta"):]), **kw)

    full = run(list(range(8)))
    split = torch.cat([run([0, 1, 2]), run([3, 4, 5, 6, 7])])
    single = torch.cat([run([i]) for i in range(8)])
    reordered = run([5, 1, 7])
    assert torch.equal(split, full)
    assert torch.equal(single, full)
    assert torch.equal(reordered, full[[5, 1, 7]])
    assert not torch.equal(full[0], full[1])
