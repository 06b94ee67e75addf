import numpy as np
import pytest

from gdm.errors import ConfigError
from gdm.metrics.npz import read_samples
from gdm.sampling import requested_labels, sample
from gdm.train.classifier import train_classifier
from gdm.train.diffusion import train_diffusion
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from gdm.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("sampling")
    cfg = tiny_config(root, train={"steps": 2}, classifier_train={"steps": 2, "eval_every": 2})
    d = prepare_dataset(cfg.data)
    unet = train_diffusion(cfg, d, root / "unet")["model"]
    clf = train_classifier(cfg, d, root / "clf")["model"]
    return cfg, unet, clf


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp2m"])
def test_sample_i_is_independent_of_batch_and_chunk_size(trained, tmp_path, sampler):
    cfg, unet, clf = trained
    a = sample(unet, tmp_path / "a", cfg.sample.model_copy(update={"sampler": sampler}), 1.0, classifier_path=clf)
    sc = cfg.sample.model_copy(update={"sampler": sampler, "batch_size": 1, "chunk_size": 5})
    b = sample(unet, tmp_path / "b", sc, 1.0, classifier_path=clf)
    xa, ya = read_samples(a.npz)
    xb, yb = read_samples(b.npz)
    assert xa.shape == (6, 8, 8, 1) and xa.dtype == np.uint8
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert a.grid.is_file() and a.meta.is_file()


def test_interrupted_sampling_fills_in_only_missing_chunks(trained, tmp_path, monkeypatch):
    cfg, unet, _clf = trained
    import gdm.sampling as smod

    ref = sample(unet, tmp_path / "ref", cfg.sample, 0.0)
    calls = {"n": 0}
    real = smod._sample_batch

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(smod, "_sample_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        sample(unet, tmp_path / "run", cfg.sample, 0.0)
    assert len(list((tmp_path / "run").glob(".*.chunks/*.npz"))) == 1  # first chunk of 4 kept
    calls["n"] = 10
    done = sample(unet, tmp_path / "run", cfg.sample, 0.0)
    assert calls["n"] == 11  # only the missing chunk (2 samples, one batch) was generated
    assert np.array_equal(read_samples(done.npz)[0], read_samples(ref.npz)[0])


def test_guidance_needs_classifier_and_matching_schedule(trained, tmp_path):
    cfg, unet, clf = trained
    with pytest.raises(ConfigError, match="needs a classifier"):
        sample(unet, tmp_path, cfg.sample, 2.0)
    from gdm.io import load_checkpoint, save_checkpoint

    ck = load_checkpoint(clf)
    ck["diffusion"] = {**ck["diffusion"], "diffusion_steps": 999}
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, ck)
    with pytest.raises(ConfigError, match="diffusion_steps=999"):
        sample(unet, tmp_path, cfg.sample, 2.0, classifier_path=bad)


def test_requested_labels_rules():
    idx = np.arange(12)
    assert requested_labels("balanced", idx, 10, 0).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    r = requested_labels("random", idx, 10, 0)
    assert np.array_equal(r[5:], requested_labels("random", idx[5:], 10, 0))
    assert requested_labels("3", idx, 10, 0).tolist() == [3] * 12
    with pytest.raises(ConfigError, match="outside"):
        requested_labels("12", idx, 10, 0)


def test_chunks_from_other_settings_are_not_reused(trained, tmp_path, monkeypatch):
    cfg, unet, _clf = trained
    import gdm.sampling as smod

    real = smod._sample_batch
    calls = {"n": 0}

    def interrupt_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(smod, "_sample_batch", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        sample(unet, tmp_path / "run", cfg.sample, 0.0)
    monkeypatch.setattr(smod, "_sample_batch", real)
    other_seed = cfg.sample.model_copy(update={"seed": 7})
    done = sample(unet, tmp_path / "run", other_seed, 0.0)  # the stale seed-0 chunk must not be used
    fresh = sample(unet, tmp_path / "fresh", other_seed, 0.0)
    assert np.array_equal(read_samples(done.npz)[0], read_samples(fresh.npz)[0])
