"""Stage functions: resolved config beside artifacts, and tracking failures never lose work."""

import yaml

from gdm import stages
from gdm.data.prepare import prepare_dataset
from tests.helpers import tiny_config


def test_unreachable_tracking_backend_keeps_training_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = tiny_config(tmp_path, tracking={"enabled": True, "tracking_uri": "http://127.0.0.1:9"},
                      train={"steps": 2})
    prepare_dataset(cfg.data)
    result = stages.train(cfg, "cond", progress=False)
    out = stages.unet_dir(cfg, "cond")
    assert (out / "model.pt").is_file() and (out / "metrics.csv").is_file()
    assert result["mlflow_run_id"] is None and result["model_version"] is None
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err


def test_every_stage_writes_its_resolved_config(tmp_path):
    cfg = tiny_config(tmp_path, tracking={"enabled": False}, train={"steps": 1})
    prepare_dataset(cfg.data)
    stages.train(cfg, "uncond", progress=False)
    written = yaml.safe_load((stages.unet_dir(cfg, "uncond") / "config.yaml").read_text())
    assert written["unet"]["num_classes"] is None  # the variant's resolved config, not the base one
    run = stages.sample(cfg, "uncond", 0.0, progress=False)
    assert yaml.safe_load((run.npz.parent / "config.yaml").read_text())["sample"]["num_samples"] == 6
    # sample.sampler_respacing: the solver samples on its own timesteps, and the config written says so
    solver = cfg.with_overrides({"sample.sampler": "dpmpp2m", "sample.sampler_respacing": {"dpmpp2m": "3"}})
    run = stages.sample(solver, "uncond", 0.0, progress=False, out=tmp_path / "solver")
    assert run.npz.name == "dpmpp2m-3-scale0.npz"
    written = yaml.safe_load((run.npz.parent / "config.yaml").read_text())["sample"]
    assert (written["respacing"], written["sampler_respacing"]) == ("3", {})
