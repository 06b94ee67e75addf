"""`gdm sample`: class-conditional / classifier-guided sampling into ADM's `.npz` format.

Sample i is drawn from generators seeded by (seed, i) (initial noise, every step's noise, a
random label), so it is the same whatever the batch size, the chunking or the number of workers.
Work is done in chunks of `sample.chunk_size` samples saved atomically; rerunning after an
interruption generates only the missing chunks. Guidance is composed here, outside the samplers
and the UNet: `cond_fn = classifier_guidance(classifier, scale, y)` (`sample.guidance: classifier`) or
the model function wrapped by `classifier_free_guidance(model, y, null, w)` (`sample.guidance: free`).

Under torchrun the missing chunks are dealt out over the ranks (chunk c holds samples
[c * chunk_size, (c + 1) * chunk_size) whoever draws it), and rank 0 assembles the npz, grid and
JSON once every rank is done: the npz is the same bytes for any number of processes, and chunks
left by a failed job are reused by the next one whatever its size.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdm import distributed
from gdm.accel import compile_fn
from gdm.config import SampleConfig
from gdm.data.dataset import to_uint8
from gdm.diffusion import (
    build_schedule,
    classifier_free_guidance,
    classifier_guidance,
    ddim_sample,
    ddpm_sample,
    dpmpp2m_sample,
    sample_generators,
    sample_seed,
)
from gdm.errors import CheckpointError, ConfigError, GdmError
from gdm.io import read_json, sha256_file, write_json
from gdm.locks import sweep_stale
from gdm.metrics.npz import iter_images, read_samples, sample_writer, write_samples
from gdm.models import load_model
from gdm.progress import SILENT, Bar
from gdm.sampling_guards import FiniteWatch, OutputClaim

LABEL_STREAM = 0x1AB3


@dataclass(frozen=True)
class SampleRun:
    npz: Path
    grid: Path
    meta: Path


# Settings that do not change what a sample is (beyond float rounding): chunks made under other values are reused.
NOT_IN_CHUNK_KEY = {"batch_size", "device", "nproc", "compile"}


def requested_labels(rule: str, indices: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Labels of samples `indices`: balanced (i mod K), random (per-sample seeded) or one class."""
    if num_classes == 0:
        return np.full(len(indices), -1, dtype=np.int64)
    if rule == "balanced":
        return (indices % num_classes).astype(np.int64)
    if rule == "random":
        return np.array([sample_seed(seed ^ LABEL_STREAM, int(i)) % num_classes for i in indices], dtype=np.int64)
    c = int(rule)
    if not 0 <= c < num_classes:
        raise ConfigError(f"sample.labels: class {c} is outside [0, {num_classes})")
    return np.full(len(indices), c, dtype=np.int64)


def check_same_schedule(unet_cfg: dict, clf_diffusion: dict, unet_path: Path, clf_path: Path) -> None:
    u = unet_cfg["diffusion"]
    for key in ("noise_schedule", "diffusion_steps"):
        if u[key] != clf_diffusion[key]:
            raise ConfigError(
                f"classifier {clf_path} was trained with diffusion.{key}={clf_diffusion[key]!r} but the UNet "
                f"{unet_path} uses {u[key]!r}: guidance needs the same noise schedule"
            )


def output_name(sc: SampleConfig, scale: float) -> str:
    eta = f"-eta{sc.eta:g}" if sc.sampler == "ddim" and sc.eta else ""
    free = "-free" if sc.guidance == "free" else ""
    return f"{sc.sampler}-{sc.respacing}{eta}{free}-scale{scale:g}"


def check_free_guidance(model, unet_path: Path) -> None:
    """Classifier-free guidance needs the learned null label, i.e. training with unet.class_dropout > 0."""
    if getattr(model, "null_label", None) is None:
        what = "is unconditional" if model.num_classes is None else "was trained without class dropout"
        raise ConfigError(
            f"sample.guidance 'free': the UNet {unet_path} {what} (unet.class_dropout = 0), so it has no null "
            "label to guide with. Train it with unet.class_dropout > 0 (e.g. 0.1), or use sample.guidance: classifier"
        )


def sample(unet_path: str | Path, out_dir: str | Path, sc: SampleConfig, scale: float = 0.0, *,
           classifier_path: str | Path | None = None, progress: Bar = SILENT) -> SampleRun:
    """Generate `sc.num_samples` samples at guidance `scale`; returns the paths written."""
    unet_path, out_dir = Path(unet_path), Path(out_dir)
    free = sc.guidance == "free"
    if scale > 0 and classifier_path is None and not free:
        raise ConfigError(f"guidance scale {scale:g} needs a classifier checkpoint (--classifier)")
    world = distributed.init(sc.device)
    progress = progress if world.is_main else SILENT
    device = world.device(sc.device)
    model, ckpt = load_model(unet_path, use_ema=sc.use_ema, kind="unet", device=device)
    if free:
        check_free_guidance(model, unet_path)
    cfg = ckpt.get("config", {})
    if "diffusion" not in cfg or "num_classes" not in ckpt.get("data", {}):
        raise CheckpointError(f"{unet_path}: the checkpoint does not record its diffusion schedule and data "
                              "(config.diffusion, data.num_classes); it cannot be sampled")
    classifier = None
    if classifier_path is not None and scale > 0 and not free:
        classifier, cck = load_model(classifier_path, kind="classifier", device=device)
        check_same_schedule(cfg, cck["diffusion"], unet_path, Path(classifier_path))
    model, classifier = compiled_for_sampling(model, classifier, sc.compile, device)
    schedule = build_schedule(cfg["diffusion"]["noise_schedule"], cfg["diffusion"]["diffusion_steps"], sc.respacing)
    num_classes = int(ckpt["data"]["num_classes"])
    requested_labels(sc.labels, np.arange(1), num_classes, sc.seed)  # a bad labels rule is refused up front
    if classifier is not None and num_classes == 0:
        raise GdmError(f"{unet_path}: classifier guidance needs class labels, but the model's dataset is "
                       "unconditional; sample scale 0 only")
    shape = (model.in_channels, model.image_size, model.image_size)
    name = output_name(sc, scale)
    chunk_dir = out_dir / f".{name}.chunks"
    key = {"unet": sha256_file(unet_path), "scale": scale,
           "classifier": sha256_file(classifier_path) if classifier is not None else None,
           **sc.model_dump(mode="json", exclude=NOT_IN_CHUNK_KEY)}

    def make_batch(indices: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        y = torch.from_numpy(labels).to(device)
        return _sample_batch(model, classifier, schedule, sc, scale, indices, y, shape, device)

    with OutputClaim(out_dir, name, world) as output:
        n_chunks, extra = generate_chunks(chunk_dir, key, sc,
                                          lambda idx: requested_labels(sc.labels, idx, num_classes, sc.seed),
                                          make_batch, world, progress, claim=output.claim)
        world.on_main(lambda: _assemble(out_dir, name, chunk_dir, n_chunks, sc, scale, unet_path, classifier_path,
                                        cfg, extra), "assembling the samples")
    return SampleRun(out_dir / f"{name}.npz", out_dir / f"{name}.png", out_dir / f"{name}.json")


def generate_chunks(chunk_dir: Path, key: dict[str, Any], sc: SampleConfig,
                    labels_of: Callable[[np.ndarray], np.ndarray],
                    make_batch: Callable[[np.ndarray, np.ndarray], torch.Tensor],
                    world, progress: Bar = SILENT,
                    claim: Callable[[], None] | None = None) -> tuple[int, dict[str, Any]]:
    """Generate the missing chunks of samples 0..sc.num_samples-1 into `chunk_dir`: one atomic npz per
    `sc.chunk_size` samples, made in batches of `sc.batch_size`, dealt out over the ranks of `world`.
    Returns (number of chunks, timing / world_size / chunks_reused for the sample JSON).

    labels_of(indices) -> the labels of those samples; make_batch(indices, labels) -> images in [-1, 1].
    Chunks left by an interrupted run with the same `key` are kept; another key starts afresh.
    `claim()` runs on rank 0 before anything is written (an `OutputClaim`'s: creates and locks the output).
    """
    n_chunks = (sc.num_samples + sc.chunk_size - 1) // sc.chunk_size

    def missing_chunks() -> list[int]:
        if claim is not None:
            claim()
        _claim_chunks(chunk_dir, key)
        return [c for c in range(n_chunks) if not (chunk_dir / f"{c:05d}.npz").exists()]

    missing = world.on_main(missing_chunks, "the chunk check")
    reused = n_chunks - len(missing)
    progress.advance(sum(_chunk_len(sc, c) for c in range(n_chunks) if c not in missing))
    generated, t0 = 0, time.perf_counter()
    for c in missing[world.rank :: world.size]:  # dealt out over the ranks
        lo = c * sc.chunk_size
        idx = np.arange(lo, lo + _chunk_len(sc, c))
        images, labels = [], labels_of(idx)
        for b in range(0, len(idx), sc.batch_size):
            bi = idx[b : b + sc.batch_size]
            images.append(to_uint8(make_batch(bi, labels[b : b + sc.batch_size])))
            generated += len(bi)
            progress.advance(len(bi) * world.size)  # rank 0's bar: its share, scaled to the job
        write_samples(chunk_dir / f"{c:05d}.npz", np.concatenate(images), labels)
    generated = int(world.all_reduce_sum(torch.tensor([generated], dtype=torch.float64)).item())
    timing = {"seconds_per_image": (time.perf_counter() - t0) / generated} if generated else {}
    return n_chunks, {**timing, "world_size": world.size, "chunks_reused": reused}


def assemble_chunks(chunk_dir: Path, n_chunks: int, npz: Path, num_samples: int) -> np.ndarray:
    """Chunks -> one npz, streamed (one chunk in memory at a time); returns the labels."""
    chunks = [chunk_dir / f"{c:05d}.npz" for c in range(n_chunks)]
    first, _ = read_samples(chunks[0])
    with sample_writer(npz, num_samples, first.shape[1:]) as w:
        for path in chunks:
            w.append(*read_samples(path))
    return np.concatenate(w.labels)


def sample_images(unet_path: str | Path, sc: SampleConfig, indices: np.ndarray, labels: np.ndarray | None = None,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Unguided samples `indices` (uint8 NHWC) of a UNet checkpoint; sample i equals sample i of `sample()`
    with the same settings (same per-sample generators). `labels`: one class per index (-1 / None: the
    `sc.labels` rule). Used by the MLflow pyfunc model (gdm.tracking.pyfunc)."""
    model, ckpt = load_model(unet_path, use_ema=sc.use_ema, kind="unet", device=device)
    cfg = ckpt.get("config", {})
    schedule = build_schedule(cfg["diffusion"]["noise_schedule"], cfg["diffusion"]["diffusion_steps"], sc.respacing)
    num_classes = int(ckpt["data"]["num_classes"])
    indices = np.asarray(indices, dtype=np.int64)
    rule = requested_labels(sc.labels, indices, num_classes, sc.seed)
    if labels is not None and num_classes:
        labels = np.asarray(labels, dtype=np.int64)
        rule = np.where(labels >= 0, labels, rule)
        if (rule >= num_classes).any():
            raise ConfigError(f"labels must lie in [0, {num_classes}) for {unet_path}, got {sorted(set(rule.tolist()))}")
    shape = (model.in_channels, model.image_size, model.image_size)
    out = []
    for b in range(0, len(indices), sc.batch_size):
        bi = indices[b : b + sc.batch_size]
        y = torch.from_numpy(rule[b : b + sc.batch_size]).to(device)
        out.append(to_uint8(_sample_batch(model, None, schedule, sc, 0.0, bi, y, shape, device)))
    return np.concatenate(out) if out else np.zeros((0, *shape[1:], shape[0]), np.uint8)


def _claim_chunks(chunk_dir: Path, key: dict[str, Any]) -> None:
    """Chunks left by an interrupted run are reused only if the same models and settings made them
    (a missing or unreadable key.json means they are not)."""
    key_file = chunk_dir / "key.json"
    if chunk_dir.exists():
        try:
            same = key_file.is_file() and read_json(key_file) == key
        except GdmError:
            same = False
        if not same:
            shutil.rmtree(chunk_dir)
    sweep_stale(chunk_dir)  # half-written chunk temporaries of a killed run
    if not key_file.is_file():
        write_json(key_file, key)


def _chunk_len(sc: SampleConfig, c: int) -> int:
    return min(sc.chunk_size, sc.num_samples - c * sc.chunk_size)


def compiled_for_sampling(model, classifier, mode: str, device):
    """`sample.compile`: the UNet and the guidance classifier through torch.compile (attributes such as
    num_classes still read through); unchanged for "none" or where no compiler is available.
    Sampling trains nothing, so no weight asks for a gradient: guidance differentiates the classifier
    with respect to x_t only. (Eager autograd skips the weight gradients of torch.autograd.grad(.., x_t)
    anyway; a compiled backward graph computes what requires_grad asks for: measured, this halves
    the classifier's compiled backward, 217 -> 101 ms of a 1.02 s guided DDIM-10 batch of 250.)"""
    model.requires_grad_(False)
    if classifier is not None:
        classifier.requires_grad_(False)
    model = compile_fn(model, mode, device, key="sample.compile")
    return model, None if classifier is None else compile_fn(classifier, mode, device, key="sample.compile")


def _sample_batch(model, classifier, schedule, sc: SampleConfig, scale: float, indices: np.ndarray,
                  y: torch.Tensor, shape: tuple, device, model_kwargs: dict | None = None) -> torch.Tensor:
    """`model_kwargs`: extra per-sample network inputs (the upsampler's `low_res`), fixed over the steps."""
    conditional = model.num_classes is not None
    extra = model_kwargs or {}

    def net(x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with torch.inference_mode():  # the UNet needs no autograd state (guidance differentiates the classifier)
            return model(x_t, t, y=labels, **extra)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x_t, t, y if conditional else None)

    if sc.guidance == "free":  # classifier-free: the model function itself is guided
        model_fn = classifier_free_guidance(net, y, model.null_label, scale)
    cond_fn = None
    if classifier is not None:
        if (y < 0).any():
            raise GdmError("classifier guidance needs class labels, but the dataset is unconditional")
        cond_fn = classifier_guidance(classifier, scale, y)
    gens = sample_generators(sc.seed, [int(i) for i in indices])
    learn_sigma = model.out_channels == 2 * model.in_channels  # from the network, not from optional kwargs
    common = {"generators": gens, "cond_fn": cond_fn, "learn_sigma": learn_sigma,
              "clip_denoised": sc.clip_denoised, "device": device}
    watch = FiniteWatch(model_fn)
    if sc.sampler == "ddpm":
        x = ddpm_sample(watch, schedule, (len(indices), *shape), **common)
    elif sc.sampler == "dpmpp2m":
        x = dpmpp2m_sample(watch, schedule, (len(indices), *shape), **common)
    else:
        x = ddim_sample(watch, schedule, (len(indices), *shape), eta=sc.eta, **common)
    watch.check(x, indices)
    return x


def _assemble(out_dir: Path, name: str, chunk_dir: Path, n_chunks: int, sc: SampleConfig, scale: float,
              unet_path: Path, classifier_path, cfg: dict, extra: dict) -> None:
    """Chunks -> one npz (streamed), then the JSON and the grid."""
    npz = out_dir / f"{name}.npz"
    labels = assemble_chunks(chunk_dir, n_chunks, npz, sc.num_samples)
    meta: dict[str, Any] = {
        "sampler": sc.sampler, "respacing": sc.respacing, "steps": _num_steps(cfg, sc), "eta": sc.eta,
        "scale": scale, "guidance": sc.guidance, "num_samples": len(labels), "seed": sc.seed, "labels": sc.labels,
        "unet": str(unet_path),
        "classifier": str(classifier_path) if classifier_path and scale > 0 and sc.guidance == "classifier" else None,
        "sample_config": sc.model_dump(mode="json"), "config": cfg, **extra,
    }
    write_json(out_dir / f"{name}.json", meta)
    _labelled_grid(npz, labels, out_dir / f"{name}.png", f"{name}")
    shutil.rmtree(chunk_dir, ignore_errors=True)


def _num_steps(cfg: dict, sc: SampleConfig) -> int:
    from gdm.diffusion import space_timesteps

    return len(space_timesteps(cfg["diffusion"]["diffusion_steps"], sc.respacing))


def _labelled_grid(npz: Path, labels: np.ndarray, path: Path, title: str, per_row: int = 10) -> Path:
    """One row per requested class (first `per_row` samples of it); unlabelled: plain 10-wide grid."""
    from gdm.viz import save_grid

    classes = [int(c) for c in np.unique(labels) if c >= 0][:20]
    want = {c: per_row for c in classes} if classes else {-1: per_row * 10}
    picked: dict[int, list[np.ndarray]] = {c: [] for c in want}
    start = 0
    for batch in iter_images(npz, 1024):  # the first few of each class, streamed
        for i, img in enumerate(batch):
            c = int(labels[start + i]) if classes else -1
            if c in want and len(picked[c]) < want[c]:
                picked[c].append(img)
        start += len(batch)
        if all(len(picked[c]) == want[c] for c in want):
            break
    if not classes:
        return save_grid(np.stack(picked[-1]), path, nrow=per_row, title=title)
    blank = np.full(picked[classes[0]][0].shape, 255, np.uint8)
    rows = [np.stack(picked[c] + [blank] * (per_row - len(picked[c]))) for c in classes]
    return save_grid(np.concatenate(rows), path, nrow=per_row, row_labels=[str(c) for c in classes], title=title)
