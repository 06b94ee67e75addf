"""Two-stage sampling (ADM-U): a base model at the low resolution, then the upsampler.

Determinism across batch sizes (per-sample seeds in both stages), shapes and label plumbing, the low-res
stage kept beside the final images, and the refusals (mismatched pair, wrong checkpoint kind, missing labels).
"""

import numpy as np
import pytest
import torch

from gdm.data.lowres import area_downsample
from gdm.errors import ConfigError
from gdm.io import read_json
from gdm.metrics.npz import read_samples, write_samples
from gdm.train.diffusion import train_diffusion
from gdm.train.targets import UNET, UPSAMPLER
from gdm.upsampling import sample_two_stage, upsample, upsample_config
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from gdm.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("upsampling")
    # a large lr and the raw weights so 2 steps already give outputs that depend on the inputs
    cfg = tiny_config(root, train={"steps": 2, "lr": 0.02}, upsampler_train={"steps": 2, "lr": 0.02},
                      sample={"use_ema": False})
    d = prepare_dataset(cfg.data)
    low_cfg = cfg.with_overrides({"train.resolution": 4})
    base = train_diffusion(low_cfg, d, root / "base")["model"]
    direct = train_diffusion(cfg, d, root / "direct")["model"]
    up = train_diffusion(cfg, d, root / "up", target=UPSAMPLER)["model"]
    return cfg, d, base, direct, up


def test_area_downsample_is_the_block_mean():
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    low = area_downsample(x, 4)
    expected = x.reshape(1, 1, 4, 2, 4, 2).mean(dim=(3, 5))
    assert torch.equal(low, expected)
    assert area_downsample(x, 8) is x


def test_upsampler_target_conditions_on_the_area_downsampled_batch(models):
    cfg, d, *_ = models
    from gdm.data.dataset import read_manifest

    m = read_manifest(d)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    x, extra = UPSAMPLER.inputs(cfg, m, x0)
    assert torch.equal(x, x0) and torch.equal(extra["low_res"], area_downsample(x0, 4))
    x4, none = UNET.inputs(cfg.with_overrides({"train.resolution": 4}), m, x0)
    assert torch.equal(x4, area_downsample(x0, 4)) and none == {}
    kw = UPSAMPLER.model_kwargs(cfg, m)
    assert (kw["small_size"], kw["large_size"], kw["in_channels"]) == (4, 8, 1) and "low_resolution" not in kw


def test_two_stage_sample_i_is_independent_of_batching(models, tmp_path):
    cfg, _d, base, _direct, up = models
    a, a_low = sample_two_stage(base, up, tmp_path / "a", cfg.sample, 0.0)
    sc = cfg.sample.model_copy(update={"batch_size": 1, "chunk_size": 5})
    b, b_low = sample_two_stage(base, up, tmp_path / "b", sc, 0.0)
    xa, ya = read_samples(a.npz)
    xl, yl = read_samples(a_low.npz)
    assert xa.shape == (6, 8, 8, 1) and xl.shape == (6, 4, 4, 1)
    assert np.array_equal(xa, read_samples(b.npz)[0]) and np.array_equal(xl, read_samples(b_low.npz)[0])
    assert np.array_equal(ya, yl) and list(ya) == [0, 1, 2, 3, 4, 5]
    assert a_low.npz.parent == tmp_path / "a" / "low" and len(list((tmp_path / "a").glob("*.npz"))) == 1
    meta = read_json(a.meta)
    assert meta["base"]["resolution" if "resolution" in meta["base"] else "num_samples"] is not None
    assert (meta["low_resolution"], meta["resolution"], meta["sampler"], meta["respacing"]) == (4, 8, "ddim", "5")
    assert meta["noise_seed"] != cfg.sample.seed  # stage 2 draws from its own stream


def test_upsampler_is_conditioned_on_each_base_sample(models, tmp_path):
    """Changing one low-res image changes only that sample's upsampling."""
    cfg, _d, base, _direct, up = models
    _, low = sample_two_stage(base, up, tmp_path / "ref", cfg.sample, 0.0)
    images, labels = read_samples(low.npz)
    edited = images.copy()
    edited[2] = 255 - edited[2]
    write_samples(tmp_path / "edited.npz", edited, labels)
    ref = read_samples(upsample(up, low.npz, tmp_path / "r", cfg.sample).npz)[0]
    new = read_samples(upsample(up, tmp_path / "edited.npz", tmp_path / "e", cfg.sample).npz)[0]
    changed = [i for i in range(len(ref)) if not np.array_equal(ref[i], new[i])]
    assert changed == [2]


def test_refusals(models, tmp_path):
    cfg, _d, base, direct, up = models
    with pytest.raises(ConfigError, match=r"samples 8x8x1 but the upsampler .* upsamples 4x4x1"):
        sample_two_stage(direct, up, tmp_path / "x", cfg.sample, 0.0)
    assert not (tmp_path / "x").exists()  # refused before any work
    with pytest.raises(ConfigError, match="expected an upsampler"):
        sample_two_stage(base, base, tmp_path / "y", cfg.sample, 0.0)
    images = np.zeros((6, 4, 4, 1), np.uint8)
    write_samples(tmp_path / "nolabels.npz", images, None)
    with pytest.raises(ConfigError, match="class-conditional but .* has no labels"):
        upsample(up, tmp_path / "nolabels.npz", tmp_path / "z", cfg.sample)
    write_samples(tmp_path / "big.npz", np.zeros((6, 8, 8, 1), np.uint8), np.zeros(6, np.int64))
    with pytest.raises(ConfigError, match="images are 8x8x1 but the upsampler"):
        upsample(up, tmp_path / "big.npz", tmp_path / "w", cfg.sample)


def test_upsample_config_uses_its_own_sampler_and_respacing(models):
    cfg = models[0]
    sc = cfg.sample.model_copy(update={"sampler": "ddpm", "respacing": "ddim25", "upsample_sampler": None,
                                       "guidance": "free"})
    up = upsample_config(sc)
    assert (up.sampler, up.respacing, up.guidance) == ("ddpm", "5", "classifier")


def test_cli_two_stage_sampling_and_refusals(models, tmp_path, capsys):
    import yaml

    from gdm.cli import main

    cfg, _d, base, direct, up = models
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg.to_dict()))

    def run(*argv):
        try:
            main(["sample", "--params", str(params), "--quiet", *argv])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = run("--unet", str(base), "--upsample", str(up), "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert "low-res stage" in out and len(list((tmp_path / "s" / "low").glob("*.npz"))) == 1
    code, _out, err = run("--unet", str(direct), "--upsample", str(up), "--out", str(tmp_path / "t"))
    assert code == 2 and "upsamples 4x4x1" in err and "Traceback" not in err
    code, _out, err = run("--unet", str(direct), "--guidance", "free", "--scale", "1.0", "--out", str(tmp_path / "f"))
    assert code == 2 and "trained without class dropout" in err
