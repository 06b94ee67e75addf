"""`gdm sample` with classifier-free guidance: a UNet trained with class dropout, w = 0 identity, refusals."""

import numpy as np
import pytest
import torch

from gdm.errors import ConfigError
from gdm.io import load_checkpoint
from gdm.metrics.npz import read_samples
from gdm.sampling import sample
from gdm.train.diffusion import drop_labels, train_diffusion
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from gdm.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("sampling-free")
    # a large lr and the raw weights (not the EMA) so that 2 steps already give label-dependent outputs
    cfg = tiny_config(root, train={"steps": 2, "lr": 0.02}, unet={"class_dropout": 0.5},
                      sample={"use_ema": False})
    d = prepare_dataset(cfg.data)
    free = train_diffusion(cfg, d, root / "free")["model"]
    plain = train_diffusion(cfg.with_overrides({"unet.class_dropout": 0.0}), d, root / "plain")["model"]
    return cfg, free, plain


def test_drop_labels_replaces_a_seeded_fraction_by_the_null_label():
    from gdm.train.batches import position_generators

    y = torch.arange(10).repeat(100)
    dropped = drop_labels(y, 0.25, 10, position_generators(0, 7, range(len(y))))
    mask = dropped == 10
    assert 0.2 < mask.float().mean() < 0.3
    assert torch.equal(dropped[~mask], y[~mask])
    # label j's draw comes from position j's generator: any split of the batch drops the same labels
    halves = [drop_labels(y[a:b], 0.25, 10, position_generators(0, 7, range(a, b))) for a, b in ((0, 300), (300, 1000))]
    assert torch.equal(torch.cat(halves), dropped)
    assert drop_labels(y, 0.0, None, []) is y


def test_trained_checkpoint_has_the_null_row(trained):
    _cfg, free, plain = trained
    ck = load_checkpoint(free)
    assert ck["model_kwargs"]["class_dropout"] == 0.5
    assert ck["model"]["label_emb.weight"].shape[0] == 11
    assert load_checkpoint(plain)["model"]["label_emb.weight"].shape[0] == 10


def test_w_zero_equals_unguided_conditional_sampling_and_w_changes_samples(trained, tmp_path):
    """(Both samplers at the sampler level: tests/diffusion/test_guidance_free.py.)"""
    cfg, free, _ = trained
    sc = cfg.sample
    unguided = sample(free, tmp_path / "u", sc, 0.0)
    zero = sample(free, tmp_path / "z", sc.model_copy(update={"guidance": "free"}), 0.0)
    assert zero.npz.name != unguided.npz.name  # free runs are named apart (-free-scale0)
    assert np.array_equal(read_samples(zero.npz)[0], read_samples(unguided.npz)[0])
    batched = sample(free, tmp_path / "w", sc.model_copy(update={"guidance": "free"}), 2.0)
    single = sample(free, tmp_path / "w1", sc.model_copy(update={"guidance": "free", "batch_size": 1,
                                                                "chunk_size": 5}), 2.0)
    xw, yw = read_samples(batched.npz)
    assert np.array_equal(xw, read_samples(single.npz)[0])  # sample i independent of batching
    assert np.array_equal(yw, read_samples(unguided.npz)[1])
    assert not np.array_equal(xw, read_samples(unguided.npz)[0])


def test_free_guidance_refuses_a_checkpoint_without_class_dropout(trained, tmp_path):
    cfg, _free, plain = trained
    with pytest.raises(ConfigError, match=r"trained without class dropout \(unet.class_dropout = 0\)") as e:
        sample(plain, tmp_path / "x", cfg.sample.model_copy(update={"guidance": "free"}), 1.0)
    assert str(plain) in str(e.value)
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").glob("*.npz"))


def test_free_guidance_needs_no_classifier(trained, tmp_path):
    cfg, free, _ = trained
    run = sample(free, tmp_path / "f", cfg.sample.model_copy(update={"guidance": "free"}), 1.0)
    from gdm.io import read_json

    meta = read_json(run.meta)
    assert meta["guidance"] == "free" and meta["classifier"] is None and meta["scale"] == 1.0
