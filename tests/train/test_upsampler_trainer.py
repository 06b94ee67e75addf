"""`gdm train-upsampler`: the diffusion trainer with the UPSAMPLER target (resume exactness, checkpoint)."""

import pytest
import torch

from gdm.errors import ConfigError
from gdm.io import load_checkpoint
from gdm.models import load_model
from gdm.train.diffusion import train_diffusion
from gdm.train.targets import UPSAMPLER
from tests.helpers import Interrupt, tiny_config


def test_upsampler_resume_is_bit_exact(tmp_path, digits_dir):
    cfg = tiny_config(tmp_path)
    full = train_diffusion(cfg, digits_dir, tmp_path / "full", target=UPSAMPLER)
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(cfg, digits_dir, tmp_path / "part", progress=Interrupt(4), target=UPSAMPLER)
    resumed = train_diffusion(cfg, digits_dir, tmp_path / "part", target=UPSAMPLER)
    assert resumed["resumed_from"] == 3
    a, b = load_checkpoint(full["model"]), load_checkpoint(resumed["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["0.999"]:
        assert torch.equal(a["ema"]["0.999"][k], b["ema"]["0.999"][k]), k
    model, ck = load_model(full["model"], kind="superres")
    assert (model.small_size, model.large_size) == (4, 8) and ck["config"]["upsampler"]["low_resolution"] == 4
    assert model.input_blocks[0][0].weight.shape[1] == 2  # x_t and the upsampled low-res image


def test_upsampler_run_fingerprint_is_its_own_sections(tmp_path, digits_dir):
    """Changing the base UNet's sections does not disturb an upsampler run; changing its own does."""
    cfg = tiny_config(tmp_path, upsampler_train={"steps": 3})
    train_diffusion(cfg, digits_dir, tmp_path / "up", target=UPSAMPLER)
    more = cfg.with_overrides({"upsampler_train.steps": 6, "unet.model_channels": 64, "train.lr": 1e-3})
    assert train_diffusion(more, digits_dir, tmp_path / "up", target=UPSAMPLER)["resumed_from"] == 3
    from gdm.errors import CheckpointError

    with pytest.raises(CheckpointError, match="upsampler.low_resolution"):
        train_diffusion(more.with_overrides({"upsampler.low_resolution": 2, "upsampler_train.steps": 9}),
                        digits_dir, tmp_path / "up", target=UPSAMPLER)


def test_upsampler_loss_needs_matching_variance(tmp_path, digits_dir):
    cfg = tiny_config(tmp_path, upsampler={"learn_sigma": False})
    with pytest.raises(ConfigError, match="upsampler.learn_sigma"):
        train_diffusion(cfg, digits_dir, tmp_path / "x", target=UPSAMPLER)
