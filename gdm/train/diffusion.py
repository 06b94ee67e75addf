"""`gdm train`: the diffusion UNet on a prepared dataset (ADM section 4 training recipe).

Loop per step k: batch, timesteps, noise and dropout come from generators seeded by (seed, k)
(`gdm.train.batches`), the loss is ADM's (`diffusion.loss_type`, importance-weighted when the
loss-second-moment sampler is on), gradients are accumulated over micro-batches so the gradient
is the full-batch mean whatever their number, then AdamW, EMA at every rate, periodic atomic
checkpoints. `resume=True` continues from the newest checkpoint and gives, on CPU, the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gdm.config import Config
from gdm.data.dataset import read_manifest
from gdm.data.reader import StepReader
from gdm.diffusion import build_schedule, create_timestep_sampler, sample_seed, training_losses
from gdm.errors import ConfigError
from gdm.models import FORMAT, build, resolve_device, unet_kwargs
from gdm.progress import SILENT, Bar
from gdm.train.batches import step_generator
from gdm.train.checkpoints import READER_KEYS, CheckpointDir, fingerprint
from gdm.train.optim import (
    NonFiniteLoss,
    Precision,
    ema_rate,
    ema_update,
    lr_at,
    set_lr,
)
from gdm.train.runlog import MetricsLog

MODEL_FILE = "model.pt"
OnLog = Callable[[int, dict[str, float]], None]


def check_labels(cfg: Config, manifest) -> None:
    nc = cfg.unet.num_classes
    if nc is not None and nc != manifest.num_classes:
        raise ConfigError(
            f"unet.num_classes is {nc} but the prepared dataset {manifest.path} has "
            f"{manifest.num_classes} classes (set unet.num_classes: {manifest.num_classes or 'null'})"
        )


# Keys that do not change what a run computes: changing them still resumes (steps extends the run).
NOT_FINGERPRINTED = {"train.steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.device", "train.num_workers"}


def train_diffusion(cfg: Config, dataset_dir: str | Path, run_dir: str | Path, *, resume: bool = True,
                    restart_on_mismatch: bool = False, progress: Bar = SILENT,
                    on_log: OnLog | None = None) -> dict[str, Any]:
    tc = cfg.train
    run_dir = Path(run_dir)
    manifest = read_manifest(dataset_dir)
    check_labels(cfg, manifest)
    device = resolve_device(tc.device)
    data = StepReader(str(dataset_dir), "train", batch_size=tc.batch_size, seed=tc.seed, manifest=manifest,
                      random_flip=cfg.data.random_flip, shuffle_window=cfg.data.shuffle_window,
                      num_workers=tc.num_workers)

    torch.manual_seed(tc.seed)
    kwargs = unet_kwargs(cfg.unet, manifest.resolution, manifest.channels)
    model = build("unet", kwargs).to(device)
    schedule = build_schedule(cfg.diffusion.noise_schedule, cfg.diffusion.diffusion_steps)
    ts_sampler = create_timestep_sampler(cfg.diffusion.timestep_sampler, cfg.diffusion.diffusion_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.999))
    ema = {str(r): {k: v.detach().clone() for k, v in model.state_dict().items()} for r in tc.ema_rates}
    precision = Precision(tc.precision, device)
    ckpts = CheckpointDir(run_dir / "checkpoints", tc.keep_checkpoints)
    log = MetricsLog(run_dir / "metrics.csv")
    log.extra["num_parameters"] = sum(p.numel() for p in model.parameters())
    start, ema_updates = 0, 0
    fp = fingerprint(cfg.flat(), ("unet", "diffusion", "train"), NOT_FINGERPRINTED, manifest.content_hash,
                     READER_KEYS)

    state = ckpts.resume_state(fp, resume=resume, restart_on_mismatch=restart_on_mismatch, max_step=tc.steps)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        precision.scaler.load_state_dict(state["scaler"])
        ts_sampler.load_state_dict(state["timestep_sampler"])
        ema = {r: {k: v.to(device) for k, v in sd.items()} for r, sd in state["ema"].items()}
        start, ema_updates = int(state["step"]), int(state["ema_updates"])
    log.truncate(start)

    def payload(step: int) -> dict[str, Any]:
        return {
            "format": FORMAT, "kind": "unet", "model_kwargs": kwargs, "model": model.state_dict(),
            "ema": ema, "ema_use": str(tc.ema_rates[0]), "optimizer": opt.state_dict(),
            "scaler": precision.scaler.state_dict(), "timestep_sampler": ts_sampler.state_dict(),
            "step": step, "ema_updates": ema_updates, "config": cfg.to_dict(), "fingerprint": fp,
            "data": manifest.info(), "rng": {"torch": torch.get_rng_state()},
        }

    params = [p for p in model.parameters() if p.requires_grad]
    micro = tc.batch_size if tc.microbatch <= 0 else tc.microbatch
    bad_streak, t0, seen = 0, time.perf_counter(), 0
    model.train()
    progress.advance(start)
    for step, (x0, y) in data.batches(start, tc.steps):
        g = step_generator(tc.seed, step)
        t, weights = ts_sampler.sample(len(y), "cpu", generator=g)
        noise = torch.randn(x0.shape, generator=g)
        torch.manual_seed(sample_seed(tc.seed + 1, step))  # dropout
        set_lr(opt, lr_at(step, tc.lr, tc.lr_schedule, tc.steps, tc.warmup_steps))
        opt.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "mse": 0.0, "vb": 0.0}
        per_sample = []
        for s in range(0, len(y), micro):
            sl = slice(s, s + micro)
            xb, tb, nb, wb = (v[sl].to(device) for v in (x0, t, noise, weights))
            yb = y[sl].to(device) if cfg.unet.num_classes is not None else None
            with precision.autocast():
                terms = training_losses(schedule, lambda xt, tt, yb=yb: model(xt, tt, yb), xb, tb, noise=nb,
                                        loss_type=cfg.diffusion.loss_type, learn_sigma=cfg.unet.learn_sigma)
                loss = (terms["loss"].float() * wb).sum() / len(y)  # full-batch mean over micro-batches
            precision.backward(loss)
            per_sample.append(terms["loss"].detach().float().cpu())
            for k in totals:
                if k in terms:
                    totals[k] += float(terms[k].detach().float().sum()) / len(y)
        if not all(map(_finite, totals.values())):
            bad_streak += 1
            if tc.precision != "fp16" or bad_streak > 20:
                raise NonFiniteLoss(
                    f"train: loss became non-finite at step {step + 1} ({totals}); stopping. The last good "
                    f"checkpoint is kept: {ckpts.latest()}. Try a lower train.lr or train.precision fp32."
                )
        else:
            bad_streak = 0
            ts_sampler.update(t, torch.cat(per_sample))  # never feed a NaN into the importance sampler
        stepped, gnorm = precision.step(opt, params, tc.grad_clip)
        if stepped:
            for r in tc.ema_rates:
                ema_update(ema[str(r)], model, ema_rate(r, ema_updates, tc.ema_warmup))
            ema_updates += 1
        seen += len(y)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            elapsed = time.perf_counter() - t0
            row = {"step": done, **totals, "lr": opt.param_groups[0]["lr"], "grad_norm": gnorm,
                   "loss_scale": precision.scaler.get_scale() if precision.scaler.is_enabled() else 1.0,
                   "images_per_s": seen / max(elapsed, 1e-9)}
            log.append(row)
            if on_log:
                on_log(done, row)
        if done % tc.checkpoint_every == 0 or done == tc.steps:
            ckpts.save(done, payload(done))
            log.write()
        progress.advance(loss=totals["loss"])

    final = run_dir / MODEL_FILE
    if start < tc.steps or not final.exists():
        from gdm.io import save_checkpoint

        full = payload(tc.steps)
        save_checkpoint(final, {k: full[k] for k in ("format", "kind", "model_kwargs", "model", "ema", "ema_use",
                                                     "step", "config", "data")})
    log.write()
    return {"model": str(final), "steps": tc.steps, "resumed_from": start, **log.last(), **log.extra}


def _finite(v: float) -> bool:
    return math.isfinite(v)

