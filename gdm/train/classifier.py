"""`gdm train-classifier`: the noisy classifier p(y | x_t, t) used for guidance (ADM section 2).

Input q_sample(x0, t) with t ~ Uniform{0..T-1} under the SAME schedule as the diffusion model,
cross-entropy, AdamW with an optional linear lr anneal. Validation accuracy is reported per
t-quartile (t in [0, T/4), [T/4, T/2), ...): near-clean inputs are easy, pure noise is chance.
Same checkpoint/resume guarantees as the diffusion trainer, and the same data parallelism under
torchrun (global `classifier_train.batch_size`, each rank its share of the step's positions with
their t and noise; rank 0 writes; validation accuracy is computed by rank 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gdm import distributed
from gdm.config import Config
from gdm.data.dataset import read_manifest
from gdm.data.lowres import area_downsample
from gdm.data.reader import RowReader, StepReader
from gdm.diffusion import build_schedule, model_timesteps, q_sample, sample_seed
from gdm.errors import ConfigError
from gdm.io import save_checkpoint
from gdm.models import FORMAT, build, classifier_kwargs
from gdm.progress import SILENT, Bar
from gdm.rng import draws_from_global_rng, seeded, step_rng
from gdm.train.batches import dropout_seed, position_generators, position_noise
from gdm.train.checkpoints import READER_KEYS, CheckpointDir, begin_run, fingerprint, resume_on_every_rank
from gdm.train.diffusion import check_world
from gdm.train.optim import NonFiniteLoss, Precision, adamw, lr_at, set_lr
from gdm.train.runlog import MetricsLog

MODEL_FILE = "classifier.pt"


@torch.no_grad()
def accuracy_by_quartile(model: torch.nn.Module, schedule, val: RowReader, *, seed: int, batch_size: int = 512,
                         device: torch.device | str = "cpu", resolution: int | None = None) -> list[float]:
    """Accuracy on q_sample(x0, t) for t drawn uniformly inside each quarter of [0, T) (val streamed in order;
    area-downsampled to `resolution` when given)."""
    T = schedule.num_timesteps
    accs = []
    model.eval()
    for q in range(4):
        g = torch.Generator().manual_seed(sample_seed(seed, q))
        lo, hi = q * T // 4, (q + 1) * T // 4
        correct = 0
        for x0, y in val.chunks(batch_size):
            x0 = area_downsample(x0, resolution) if resolution else x0
            t = torch.randint(lo, max(hi, lo + 1), (len(x0),), generator=g)
            x_t = q_sample(schedule, x0, t, torch.randn(x0.shape, generator=g))
            logits = model(x_t.to(device), model_timesteps(schedule, t).to(device))
            correct += int((logits.argmax(-1).cpu() == y).sum())
        accs.append(correct / len(val))
    return accs


NOT_FINGERPRINTED = {"classifier_train.steps", "classifier_train.log_every", "classifier_train.checkpoint_every",
                     "classifier_train.keep_checkpoints", "classifier_train.eval_every", "classifier_train.device",
                     "classifier_train.num_workers", "classifier_train.nproc", "classifier_train.fused_optimizer"}


def train_classifier(cfg: Config, dataset_dir: str | Path, run_dir: str | Path, *, resume: bool = True,
                     restart_on_mismatch: bool = False, progress: Bar = SILENT,
                     on_log: Callable[[int, dict], None] | None = None,
                     on_start: Callable[[], Any] | None = None) -> dict[str, Any]:
    tc = cfg.classifier_train
    run_dir = Path(run_dir)
    world = distributed.init(tc.device)
    progress = progress if world.is_main else SILENT
    manifest = read_manifest(dataset_dir)
    if manifest.num_classes < 2:
        raise ConfigError(f"train-classifier: dataset {manifest.path} is unconditional (no labels to learn)")
    device = world.device(tc.device)
    check_world(tc.batch_size, world, "classifier_train.batch_size")
    train = StepReader(str(dataset_dir), "train", batch_size=tc.batch_size, seed=tc.seed, manifest=manifest,
                       random_flip=cfg.data.random_flip, shuffle_window=cfg.data.shuffle_window,
                       num_workers=tc.num_workers, rank=world.rank, world_size=world.size)
    val = RowReader(manifest, "val")
    B = train.global_batch_size  # this rank reads rows train.slice of each step's global batch
    pos = range(train.slice.start, train.slice.stop)
    res = tc.resolution or manifest.resolution  # classifier_train.resolution: the low-res view (upsampling study)
    kwargs = classifier_kwargs(cfg.classifier, res, manifest.channels, manifest.num_classes)
    with seeded(tc.seed):  # the initial weights, whatever other threads of this process draw
        model = build("classifier", kwargs).to(device)
    stochastic = draws_from_global_rng(model)
    schedule = build_schedule(cfg.diffusion.noise_schedule, cfg.diffusion.diffusion_steps)
    opt = adamw(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=tc.fused_optimizer,
                key="classifier_train.fused_optimizer")
    precision = Precision(tc.precision, device)
    ckpts = CheckpointDir(run_dir / "checkpoints", tc.keep_checkpoints)
    log = MetricsLog(run_dir / "metrics.csv")
    log.extra["num_parameters"] = sum(p.numel() for p in model.parameters())
    log.extra["world_size"] = world.size
    start = 0
    fp = fingerprint(cfg.flat(), ("classifier", "diffusion", "classifier_train"), NOT_FINGERPRINTED,
                     manifest.content_hash, READER_KEYS)
    state = resume_on_every_rank(ckpts, world, fp, resume=resume, restart_on_mismatch=restart_on_mismatch,
                                 max_step=tc.steps)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        precision.scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
    log.truncate(start)
    begin_run(world, train, start, on_start, run_dir, ckpts)
    net = world.wrap(model, device)

    def payload(step: int) -> dict[str, Any]:
        return {"format": FORMAT, "kind": "classifier", "model_kwargs": kwargs, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scaler": precision.scaler.state_dict(), "step": step,
                "config": cfg.to_dict(), "diffusion": cfg.diffusion.model_dump(), "data": manifest.info(),
                "fingerprint": fp, "world_size": world.size}

    t0, seen = time.perf_counter(), 0
    progress.advance(start)
    for step, (x0, y) in train.batches(start, tc.steps):
        net.train()
        gens = position_generators(tc.seed, step, pos)
        x0 = area_downsample(x0, res)  # classifier_train.resolution (the upsampling study's low-res view)
        t = torch.cat([torch.randint(0, schedule.num_timesteps, (1,), generator=g) for g in gens])
        x_t = q_sample(schedule, x0, t, position_noise(gens, tuple(x0.shape[1:])))
        set_lr(opt, lr_at(step, tc.lr, "linear" if tc.lr_anneal else "constant", tc.steps))
        opt.zero_grad(set_to_none=True)
        with step_rng(dropout_seed(tc.seed, step, world.rank), stochastic):  # dropout draws, if any
            with precision.autocast():
                logits = net(x_t.to(device), model_timesteps(schedule, t).to(device))
                loss_sum = F.cross_entropy(logits.float(), y.to(device), reduction="sum")
            # the global batch mean: DDP averages the ranks' gradients of (sum / B * world_size)
            precision.backward(loss_sum / B * world.size)
        stats = world.all_reduce_sum(torch.tensor([float(loss_sum.detach()),
                                                   float((logits.argmax(-1).cpu() == y).sum())], dtype=torch.float64))
        loss = float(stats[0]) / B
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"train-classifier: loss became non-finite at step {step + 1}; stopping. "
                                f"{ckpts.kept_message(tc.checkpoint_every)} Try a lower classifier_train.lr.")
        precision.step(opt, model.parameters(), None)
        seen += B
        done = step + 1
        row: dict[str, Any] | None = None
        if done % tc.log_every == 0 or done == tc.steps:
            row = {"step": done, "loss": loss, "train_acc": float(stats[1]) / B, "lr": opt.param_groups[0]["lr"],
                   "images_per_s": seen / max(time.perf_counter() - t0, 1e-9)}
        if (done % tc.eval_every == 0 or done == tc.steps) and world.is_main:
            quart = accuracy_by_quartile(model, schedule, val, seed=tc.seed, device=device, resolution=res)
            row = row or {"step": done}
            row.update({f"val_acc_q{i + 1}": a for i, a in enumerate(quart)})
            row["val_acc"] = sum(quart) / 4
        if row is not None:
            log.append(row)
            if on_log and world.is_main:
                on_log(done, row)
        if done % tc.checkpoint_every == 0 or done == tc.steps:
            world.check_same(model.state_dict(), f"train-classifier step {done}")
            if world.is_main:
                log.write()  # rows first: a kill between the two never leaves a checkpoint without its rows
                ckpts.save(done, payload(done))
        progress.advance(loss=loss)

    final = run_dir / MODEL_FILE
    if world.is_main and (start < tc.steps or not final.exists()):
        full = payload(tc.steps)
        save_checkpoint(final, {k: full[k] for k in ("format", "kind", "model_kwargs", "model", "step", "config",
                                                     "diffusion", "data", "world_size")})
    if world.is_main:
        log.write()
    world.barrier()
    last = {k: v for r in log.rows for k, v in r.items()}  # latest value of every column
    return {"model": str(final), "steps": tc.steps, "resumed_from": start, **last, **log.extra}
