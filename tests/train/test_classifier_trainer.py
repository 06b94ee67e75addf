import pytest
import torch

from gdm.io import load_checkpoint
from gdm.train.classifier import train_classifier
from tests.helpers import Interrupt, tiny_config


def test_classifier_trains_resumes_exactly_and_reports_quartiles(tmp_path, digits_dir):
    cfg = tiny_config(tmp_path)
    full = train_classifier(cfg, digits_dir, tmp_path / "full")
    assert {f"val_acc_q{i}" for i in range(1, 5)} <= set(full)
    assert all(0.0 <= full[f"val_acc_q{i}"] <= 1.0 for i in range(1, 5))
    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg, digits_dir, tmp_path / "part", progress=Interrupt(2))
    resumed = train_classifier(cfg, digits_dir, tmp_path / "part")
    assert resumed["resumed_from"] == 2
    a, b = load_checkpoint(full["model"]), load_checkpoint(resumed["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["diffusion"] == cfg.diffusion.model_dump()


def test_unconditional_dataset_is_refused(tmp_path):
    from gdm.data.prepare import prepare_dataset
    from gdm.errors import ConfigError

    cfg = tiny_config(tmp_path, data={"labels": "none", "name": "uncond"})
    d = prepare_dataset(cfg.data)
    with pytest.raises(ConfigError, match="unconditional"):
        train_classifier(cfg, d, tmp_path / "c")
