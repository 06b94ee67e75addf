"""`gdm train` / `gdm train-upsampler`: a diffusion network on a prepared dataset (ADM section 4 recipe).

What is trained is a `gdm.train.targets.Target`: the base UNet (sections `unet` + `train`) or the
ADM-U upsampler (`upsampler` + `upsampler_train`, conditioned on the batch's low-res view); the loop
is the same.

Loop per step k: batch, timesteps, noise and dropout come from generators seeded by (seed, k)
(`gdm.train.batches`), the loss is ADM's (`diffusion.loss_type`, importance-weighted when the
loss-second-moment sampler is on), gradients are accumulated over micro-batches so the gradient
is the full-batch mean whatever their number, then AdamW, EMA at every rate, periodic atomic
checkpoints. `resume=True` continues from the newest checkpoint and gives, on CPU, the same
weights as an uninterrupted run.

Data parallel (under torchrun, `gdm.distributed`): `train.batch_size` is the GLOBAL batch. Each rank
takes its contiguous share of the step's positions, with the t and eps of those positions
(`gdm.train.batches`), scales its loss sum by world_size / B so DDP's gradient average is the
full-batch mean, and syncs gradients once per step (no_sync on all but its last micro-batch).
Every rank steps the same optimizer on the same gradient and keeps the same EMA (checked at each
checkpoint); rank 0 alone writes checkpoints, metrics and the final model. Checkpoints hold
nothing world-size specific, so a run resumes under any number of ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gdm import distributed
from gdm.accel import compile_fn, standard_layout
from gdm.config import Config, check_loss_and_variance
from gdm.data.dataset import read_manifest
from gdm.data.reader import StepReader
from gdm.diffusion import build_schedule, create_timestep_sampler, training_losses
from gdm.errors import ConfigError
from gdm.models import FORMAT, build
from gdm.progress import SILENT, Bar
from gdm.rng import draws_from_global_rng, seeded, step_rng
from gdm.train.batches import dropout_seed, position_generators, position_noise
from gdm.train.checkpoints import READER_KEYS, CheckpointDir, begin_run, fingerprint, resume_on_every_rank
from gdm.train.optim import (
    NonFiniteLoss,
    Precision,
    adamw,
    ema_rate,
    ema_update,
    lr_at,
    set_lr,
)
from gdm.train.runlog import MetricsLog
from gdm.train.targets import UNET, Target

MODEL_FILE = "model.pt"
OnLog = Callable[[int, dict[str, float]], None]


def check_labels(cfg: Config, manifest, section: str = "unet") -> None:
    nc = getattr(cfg, section).num_classes
    if nc is not None and nc != manifest.num_classes:
        raise ConfigError(
            f"{section}.num_classes is {nc} but the prepared dataset {manifest.path} has "
            f"{manifest.num_classes} classes (set {section}.num_classes: {manifest.num_classes or 'null'})"
        )


# Keys that do not change what a run computes: changing them still resumes (steps extends the run;
# the number of ranks and the micro-batch size change only the order of the gradient sums, so an
# 8-GPU run resumes on 4 GPUs with micro-batches).
NOT_FINGERPRINTED = {"train.steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.device", "train.num_workers", "train.nproc", "train.microbatch",
                     "train.compile", "train.fused_optimizer"}


def check_world(batch_size: int, world: distributed.World, key: str) -> None:
    if batch_size < world.size:
        raise ConfigError(f"{key} is {batch_size} (after capping at the dataset size) but the job has "
                          f"{world.size} ranks: every rank needs at least one example per step")


def not_fingerprinted(train_section: str) -> set[str]:
    return {f"{train_section}.{k.split('.', 1)[1]}" for k in NOT_FINGERPRINTED}


def train_diffusion(cfg: Config, dataset_dir: str | Path, run_dir: str | Path, *, resume: bool = True,
                    restart_on_mismatch: bool = False, progress: Bar = SILENT,
                    on_log: OnLog | None = None, target: Target = UNET,
                    on_start: Callable[[], Any] | None = None) -> dict[str, Any]:
    tc, net_cfg = target.train_config(cfg), target.net_config(cfg)
    run_dir = Path(run_dir)
    world = distributed.init(tc.device)
    progress = progress if world.is_main else SILENT
    manifest = read_manifest(dataset_dir)
    check_labels(cfg, manifest, target.net)
    try:
        check_loss_and_variance(cfg, target.net)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    device = world.device(tc.device)
    check_world(tc.batch_size, world, f"{target.train}.batch_size")
    data = StepReader(str(dataset_dir), "train", batch_size=tc.batch_size, seed=tc.seed, manifest=manifest,
                      random_flip=cfg.data.random_flip, shuffle_window=cfg.data.shuffle_window,
                      num_workers=tc.num_workers, rank=world.rank, world_size=world.size)
    B = data.global_batch_size  # this rank reads rows data.slice of each step's global batch
    pos = range(data.slice.start, data.slice.stop)

    kwargs = target.model_kwargs(cfg, manifest)
    with seeded(tc.seed):  # the initial weights, whatever other threads of this process draw
        model = build(target.kind, kwargs).to(device)
    schedule = build_schedule(cfg.diffusion.noise_schedule, cfg.diffusion.diffusion_steps)
    ts_sampler = create_timestep_sampler(cfg.diffusion.timestep_sampler, cfg.diffusion.diffusion_steps)
    opt = adamw(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=tc.fused_optimizer,
                key=f"{target.train}.fused_optimizer")
    ema = {str(r): {k: v.detach().clone() for k, v in model.state_dict().items()} for r in tc.ema_rates}
    precision = Precision(tc.precision, device)
    ckpts = CheckpointDir(run_dir / "checkpoints", tc.keep_checkpoints)
    log = MetricsLog(run_dir / "metrics.csv")
    log.extra["num_parameters"] = sum(p.numel() for p in model.parameters())
    log.extra["world_size"] = world.size
    start, ema_updates = 0, 0
    fp = fingerprint(cfg.flat(), (target.net, "diffusion", target.train), not_fingerprinted(target.train),
                     manifest.content_hash, READER_KEYS)

    state = resume_on_every_rank(ckpts, world, fp, resume=resume, restart_on_mismatch=restart_on_mismatch,
                                 max_step=tc.steps)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        precision.scaler.load_state_dict(state["scaler"])
        ts_sampler.load_state_dict(state["timestep_sampler"])
        ema = {r: {k: v.to(device) for k, v in sd.items()} for r, sd in state["ema"].items()}
        start, ema_updates = int(state["step"]), int(state["ema_updates"])
    log.truncate(start)
    begin_run(world, data, start, on_start, run_dir, ckpts)
    net = world.wrap(model, device)  # DDP (broadcasts rank 0's weights) or the model itself

    def payload(step: int) -> dict[str, Any]:
        return {
            "format": FORMAT, "kind": target.kind, "model_kwargs": kwargs, "model": model.state_dict(),
            "ema": ema, "ema_use": str(tc.ema_rates[0]), "optimizer": opt.state_dict(),
            "scaler": precision.scaler.state_dict(), "timestep_sampler": ts_sampler.state_dict(),
            "step": step, "ema_updates": ema_updates, "config": cfg.to_dict(), "fingerprint": fp,
            "data": manifest.info(), "rng": {"torch": torch.get_rng_state()}, "world_size": world.size,
        }

    def losses(xb, tb, nb, yb, eb):  # the network (DDP-wrapped under torchrun) and ADM's loss
        return training_losses(schedule, lambda xt, tt: net(xt, tt, y=yb, **eb), xb, tb, noise=nb,
                               loss_type=cfg.diffusion.loss_type, learn_sigma=net_cfg.learn_sigma)

    losses = compile_fn(losses, tc.compile, device, key=f"{target.train}.compile")  # one graph, or eager
    params = [p for p in model.parameters() if p.requires_grad]
    micro = B if tc.microbatch <= 0 else tc.microbatch
    bad_streak, t0, seen = 0, time.perf_counter(), 0
    net.train()
    stochastic = draws_from_global_rng(model)
    progress.advance(start)
    for step, (x0, y) in data.batches(start, tc.steps):
        gens = position_generators(tc.seed, step, pos)
        x0, extra = target.inputs(cfg, manifest, x0)  # at the target's resolution (+ the upsampler's low_res)
        t, weights = ts_sampler.sample_each(gens)
        noise = position_noise(gens, tuple(x0.shape[1:]))
        y = drop_labels(y, net_cfg.class_dropout, net_cfg.num_classes, gens)  # after each position's noise
        set_lr(opt, lr_at(step, tc.lr, tc.lr_schedule, tc.steps, tc.warmup_steps))
        opt.zero_grad(set_to_none=True)
        sums = torch.zeros(3, dtype=torch.float64)  # loss, mse, vb summed over this rank's rows
        per_sample = []
        starts = range(0, len(y), micro)
        with step_rng(dropout_seed(tc.seed, step, world.rank), stochastic):  # dropout draws, if any
            for i, s in enumerate(starts):
                sl = slice(s, s + micro)
                xb, tb, nb, wb = (standard_layout(v[sl].to(device)) for v in (x0, t, noise, weights))
                yb = y[sl].to(device) if net_cfg.num_classes is not None else None
                eb = {k: standard_layout(v[sl].to(device)) for k, v in extra.items()}
                with distributed.accumulate(net, last=i == len(starts) - 1), precision.autocast():
                    terms = losses(xb, tb, nb, yb, eb)
                    # full-batch mean over micro-batches and ranks (DDP averages gradients over ranks)
                    loss = (terms["loss"].float() * wb).sum() / B * world.size
                    precision.backward(loss)
                per_sample.append(terms["loss"].detach().float().cpu())
                for j, k in enumerate(("loss", "mse", "vb")):
                    if k in terms:
                        sums[j] += float(terms[k].detach().float().sum())
        world.all_reduce_sum(sums)
        totals = {k: float(sums[j]) / B for j, k in enumerate(("loss", "mse", "vb"))}
        if not all(map(_finite, totals.values())):
            bad_streak += 1
            if tc.precision != "fp16" or bad_streak > 20:
                raise NonFiniteLoss(
                    f"{target.train}: loss became non-finite at step {step + 1} ({totals}); stopping. "
                    f"{ckpts.kept_message(tc.checkpoint_every)} Try a lower {target.train}.lr or "
                    f"{target.train}.precision fp32."
                )
        else:
            bad_streak = 0
            if ts_sampler.uses_losses:  # never feed a NaN into the importance sampler
                ts_sampler.update(world.all_gather_cat(t), world.all_gather_cat(torch.cat(per_sample)))
        stepped, gnorm = precision.step(opt, params, tc.grad_clip)
        if stepped:
            for r in tc.ema_rates:
                ema_update(ema[str(r)], model, ema_rate(r, ema_updates, tc.ema_warmup))
            ema_updates += 1
        seen += B
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            elapsed = time.perf_counter() - t0
            row = {"step": done, **totals, "lr": opt.param_groups[0]["lr"], "grad_norm": gnorm,
                   "loss_scale": precision.scaler.get_scale() if precision.scaler.is_enabled() else 1.0,
                   "images_per_s": seen / max(elapsed, 1e-9)}
            log.append(row)
            if on_log and world.is_main:
                on_log(done, row)
        if done % tc.checkpoint_every == 0 or done == tc.steps:
            world.check_same({**model.state_dict(), **{f"ema.{r}.{k}": v for r, sd in ema.items()
                                                        for k, v in sd.items()}}, f"train step {done}")
            if world.is_main:
                log.write()  # rows first: a kill between the two never leaves a checkpoint without its rows
                ckpts.save(done, payload(done))
        progress.advance(loss=totals["loss"])

    final = run_dir / MODEL_FILE
    if world.is_main and (start < tc.steps or not final.exists()):
        from gdm.io import save_checkpoint

        full = payload(tc.steps)
        save_checkpoint(final, {k: full[k] for k in ("format", "kind", "model_kwargs", "model", "ema", "ema_use",
                                                     "step", "config", "data", "world_size")})
    if world.is_main:
        log.write()
    world.barrier()  # every rank returns once the model is written
    return {"model": str(final), "steps": tc.steps, "resumed_from": start, **log.last(), **log.extra}


def drop_labels(y: torch.Tensor, p: float, null_label: int | None, gens: list[torch.Generator]) -> torch.Tensor:
    """Class dropout for classifier-free guidance: label j becomes `null_label` with probability p, drawn
    from position j's generator (so any rank / micro-batch split drops the same labels)."""
    if p <= 0 or null_label is None:
        return y
    drop = torch.stack([torch.rand((), generator=g) for g in gens]) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


def _finite(v: float) -> bool:
    return math.isfinite(v)

