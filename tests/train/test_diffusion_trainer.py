import math

import pytest
import torch

from gdm.io import load_checkpoint
from gdm.models import load_model
from gdm.train.checkpoints import CheckpointDir
from gdm.train.diffusion import train_diffusion
from gdm.train.optim import NonFiniteLoss, ema_rate, lr_at
from tests.helpers import Interrupt, tiny_config


def _weights(path):
    return load_checkpoint(path)["model"]


def test_resume_is_bit_exact(tmp_path, digits_dir):
    cfg = tiny_config(tmp_path)
    full = train_diffusion(cfg, digits_dir, tmp_path / "full")
    # interrupted at step 3 (a checkpoint), then resumed to 6
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(cfg, digits_dir, tmp_path / "part", progress=Interrupt(4))
    resumed = train_diffusion(cfg, digits_dir, tmp_path / "part")
    assert resumed["resumed_from"] == 3
    a, b = load_checkpoint(full["model"]), load_checkpoint(resumed["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["0.999"]:
        assert torch.equal(a["ema"]["0.999"][k], b["ema"]["0.999"][k]), k
    assert full["loss"] == resumed["loss"]


def test_checkpoints_keep_last_k_and_carry_config(tmp_path, digits_dir):
    cfg = tiny_config(tmp_path, train={"steps": 6, "checkpoint_every": 1, "keep_checkpoints": 2})
    out = tmp_path / "run"
    train_diffusion(cfg, digits_dir, out)
    assert CheckpointDir(out / "checkpoints", 2).steps() == [5, 6]
    ck = load_checkpoint(out / "checkpoints" / "ckpt-00000006.pt")
    assert ck["config"]["unet"]["model_channels"] == 32 and ck["step"] == 6
    assert {"optimizer", "scaler", "ema", "timestep_sampler", "model"} <= set(ck)
    model, meta = load_model(out / "model.pt")
    assert meta["data"]["num_classes"] == 10 and not model.training
    assert (out / "metrics.csv").read_text().count("\n") == 7  # header + one row per step


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, digits_dir, monkeypatch):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "run"
    train_diffusion(cfg.with_overrides({"train.steps": 3}), digits_dir, out)
    real = torch.save

    def crash(obj, f, *a, **k):
        real(obj, f, *a, **k)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash)  # gdm.io imports torch lazily: patch it at the source
    with pytest.raises(OSError, match="simulated"):
        train_diffusion(cfg, digits_dir, out)
    monkeypatch.setattr(torch, "save", real)
    ckpts = CheckpointDir(out / "checkpoints", 2)
    assert ckpts.steps() == [3]
    assert load_checkpoint(ckpts.latest())["step"] == 3
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_gradient_accumulation_does_not_change_the_update(tmp_path, digits_dir):
    cfg = tiny_config(tmp_path, train={"steps": 1, "batch_size": 16, "lr": 1e-3})
    a = train_diffusion(cfg, digits_dir, tmp_path / "a")
    b = train_diffusion(cfg.with_overrides({"train.microbatch": 4}), digits_dir, tmp_path / "b")
    wa, wb = _weights(a["model"]), _weights(b["model"])
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=1e-4), k
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, digits_dir, monkeypatch):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "run"
    import gdm.train.diffusion as td

    real = td.training_losses
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        terms = real(*a, **k)
        if calls["n"] == 5:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(td, "training_losses", poisoned)
    with pytest.raises(NonFiniteLoss, match="step 5.*ckpt-00000003.pt"):
        train_diffusion(cfg, digits_dir, out)
    assert CheckpointDir(out / "checkpoints", 2).steps() == [3]
    assert not (out / "model.pt").exists()


def test_bf16_and_fp16_precisions_train(tmp_path, digits_dir):
    for p in ("bf16", "fp16"):
        r = train_diffusion(tiny_config(tmp_path, train={"steps": 2, "precision": p}), digits_dir, tmp_path / p)
        assert math.isfinite(r["loss"])


def test_class_count_mismatch_is_refused(tmp_path, digits_dir):
    from gdm.errors import ConfigError

    with pytest.raises(ConfigError, match="unet.num_classes is 5.*10 classes"):
        train_diffusion(tiny_config(tmp_path, unet={"num_classes": 5}), digits_dir, tmp_path / "x")


def test_lr_schedules_and_ema_warmup():
    assert lr_at(0, 1.0, "constant", 10) == 1.0
    assert lr_at(0, 1.0, "warmup", 10, 4) == 0.25 and lr_at(9, 1.0, "warmup", 10, 4) == 1.0
    assert lr_at(5, 1.0, "linear", 10) == pytest.approx(0.5)
    assert ema_rate(0.999, 0, True) == pytest.approx(0.1) and ema_rate(0.999, 10**6, True) == 0.999
    assert ema_rate(0.999, 0, False) == 0.999


def test_resume_refuses_a_changed_configuration_and_restart_keeps_old_checkpoints(tmp_path, digits_dir):
    from gdm.errors import CheckpointError

    cfg = tiny_config(tmp_path, train={"steps": 3})
    out = tmp_path / "run"
    train_diffusion(cfg, digits_dir, out)
    longer = cfg.with_overrides({"train.steps": 6})  # not fingerprinted: extends the same run
    assert train_diffusion(longer, digits_dir, out)["resumed_from"] == 3
    changed = longer.with_overrides({"train.lr": 1e-3})
    with pytest.raises(CheckpointError, match=r"train.lr: 0.0003 -> 0.001.*--no-resume"):
        train_diffusion(changed, digits_dir, out)
    r = train_diffusion(changed, digits_dir, out, restart_on_mismatch=True)
    assert r["resumed_from"] == 0
    assert (out / "checkpoints.replaced-1" / "ckpt-00000006.pt").is_file()  # nothing lost
    assert (out / "metrics.csv").read_text().count("\n") == 7  # the old run's rows are not mixed in


def test_nan_loss_never_reaches_the_importance_sampler(tmp_path, digits_dir, monkeypatch):
    import gdm.train.diffusion as td

    cfg = tiny_config(tmp_path, train={"steps": 3, "precision": "fp16", "device": "cpu"},
                      diffusion={"timestep_sampler": "loss-second-moment"})
    real = td.training_losses
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        terms = real(*a, **k)
        if calls["n"] == 2:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(td, "training_losses", poisoned)
    r = train_diffusion(cfg, digits_dir, tmp_path / "run")  # fp16 skips the bad step and carries on
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt-00000003.pt")["timestep_sampler"]
    assert torch.isfinite(state["loss_history"]).all() and math.isfinite(r["loss"])


def test_a_checkpoint_past_the_requested_steps_is_not_resumed(tmp_path, digits_dir):
    from gdm.errors import CheckpointError

    cfg = tiny_config(tmp_path, train={"steps": 6})
    out = tmp_path / "run"
    train_diffusion(cfg, digits_dir, out)
    shorter = cfg.with_overrides({"train.steps": 3})
    with pytest.raises(CheckpointError, match="at step 6, past the 3 steps"):
        train_diffusion(shorter, digits_dir, out)
    r = train_diffusion(shorter, digits_dir, out, restart_on_mismatch=True)
    assert r["resumed_from"] == 0 and r["step"] == 3
