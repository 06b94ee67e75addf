"""Two-stage sampling with an ADM-U upsampler (ADM sec. 5, Table 5).

Stage 1: a base model samples at the low resolution, guided or not (`gdm.sampling.sample`), into
`<out>/low/`. Stage 2: the upsampler samples the high resolution conditioned on each base sample, with
its own sampler and respacing (`sample.upsample_sampler`, `sample.upsample_respacing`) and no guidance,
as guided-diffusion's super_res_sample.py does: it reads the base samples back from their uint8 npz
(so the upsampler sees exactly what was saved) and their labels (arr_1) when it is class-conditional.

Sample i of stage 2 is conditioned on base sample i only and drawn from generators seeded by
(upsample_seed(seed), i): like stage 1 it is the same whatever the batch size, chunking or workers.
`<out>/<name>.npz|.png|.json` hold the final images (what `gdm evaluate <out>` scores); `<out>/low/`
keeps the base stage, so both can be scored.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdm import distributed
from gdm.config import SampleConfig
from gdm.data.dataset import to_float
from gdm.diffusion import build_schedule, sample_seed
from gdm.errors import ConfigError, GdmError
from gdm.io import load_checkpoint, read_json, sha256_file, write_json
from gdm.metrics.npz import read_samples
from gdm.models import load_model
from gdm.progress import SILENT, Bar
from gdm.sampling import (
    NOT_IN_CHUNK_KEY,
    SampleRun,
    _labelled_grid,
    _num_steps,
    _sample_batch,
    assemble_chunks,
    compiled_for_sampling,
    generate_chunks,
    sample,
)
from gdm.sampling_guards import OutputClaim

UPSAMPLE_STREAM = 0x5A3D  # stage 2 noise is unrelated to stage 1's (both are seeded from sample.seed)
LOW_DIR = "low"


def upsample_seed(seed: int) -> int:
    return sample_seed(seed, UPSAMPLE_STREAM)


def upsample_config(sc: SampleConfig, num_samples: int | None = None) -> SampleConfig:
    """The sample settings of stage 2: the upsampler's sampler/respacing, unguided, its own noise stream."""
    return sc.model_copy(update={
        "sampler": sc.upsample_sampler or sc.sampler, "respacing": sc.upsample_respacing, "guidance": "classifier",
        "seed": upsample_seed(sc.seed), "num_samples": num_samples or sc.num_samples,
    })


def check_pair(base_unet: Path, upsampler: Path) -> None:
    """The base model must sample at the upsampler's low resolution, with its channels (checked before any work)."""
    base = load_checkpoint(base_unet)
    up = load_checkpoint(upsampler)
    if up.get("kind") != "superres":
        raise ConfigError(f"--upsample {upsampler}: holds a {up.get('kind')!r} model, expected an upsampler "
                          "(`gdm train-upsampler` writes one)")
    if base.get("kind") != "unet":
        raise ConfigError(f"{base_unet}: holds a {base.get('kind')!r} model, expected a base UNet")
    bk, uk = base["model_kwargs"], up["model_kwargs"]
    if bk["image_size"] != uk["small_size"] or bk["in_channels"] != uk["in_channels"]:
        raise ConfigError(
            f"the base model {base_unet} samples {bk['image_size']}x{bk['image_size']}x{bk['in_channels']} but the "
            f"upsampler {upsampler} upsamples {uk['small_size']}x{uk['small_size']}x{uk['in_channels']} "
            f"(to {uk['large_size']}): train the base at upsampler.low_resolution (`gdm train --low-res`)"
        )


def upsample(upsampler_path: str | Path, low_npz: str | Path, out_dir: str | Path, sc: SampleConfig, *,
             progress: Bar = SILENT) -> SampleRun:
    """Stage 2: upsample every image of `low_npz` (ADM .npz, uint8 NHWC + labels) with the upsampler.
    Under torchrun the chunks are dealt out over the ranks, as in `gdm.sampling.sample`."""
    upsampler_path, low_npz, out_dir = Path(upsampler_path), Path(low_npz), Path(out_dir)
    world = distributed.init(sc.device)
    progress = progress if world.is_main else SILENT
    device = world.device(sc.device)
    model, ckpt = load_model(upsampler_path, use_ema=sc.use_ema, kind="superres", device=device)
    model, _ = compiled_for_sampling(model, None, sc.compile, device)
    low_images, labels = read_samples(low_npz)
    n, h, w, c = low_images.shape
    if (h, w, c) != (model.small_size, model.small_size, model.in_channels):
        raise ConfigError(f"{low_npz}: images are {h}x{w}x{c} but the upsampler {upsampler_path} takes "
                          f"{model.small_size}x{model.small_size}x{model.in_channels}")
    if labels is None:
        labels = np.full(n, -1, dtype=np.int64)
    if model.num_classes is not None and (labels < 0).any():
        raise ConfigError(f"the upsampler {upsampler_path} is class-conditional but {low_npz} has no labels "
                          "(arr_1): sample the base with class labels")
    up_sc = upsample_config(sc, n)
    cfg = ckpt["config"]
    schedule = build_schedule(cfg["diffusion"]["noise_schedule"], cfg["diffusion"]["diffusion_steps"], up_sc.respacing)
    low = to_float(low_images)
    shape = (model.in_channels, model.large_size, model.large_size)
    y_all = labels if model.num_classes is not None else np.zeros(n, dtype=np.int64)

    def make_batch(indices: np.ndarray, _labels: np.ndarray) -> torch.Tensor:
        y = torch.from_numpy(y_all[indices]).to(device)
        return _sample_batch(model, None, schedule, up_sc, 0.0, indices, y, shape, device,
                             model_kwargs={"low_res": low[indices].to(device)})

    name = f"{low_npz.stem}-up-{up_sc.sampler}-{up_sc.respacing}"
    chunk_dir = out_dir / f".{name}.chunks"
    key = {"upsampler": sha256_file(upsampler_path), "low": sha256_file(low_npz),
           **up_sc.model_dump(mode="json", exclude=NOT_IN_CHUNK_KEY)}

    def assemble() -> None:
        npz = out_dir / f"{name}.npz"
        out_labels = assemble_chunks(chunk_dir, n_chunks, npz, n)
        base_meta = low_npz.with_suffix(".json")
        meta: dict[str, Any] = {
            "stage": "upsample", "upsampler": str(upsampler_path), "low_res_samples": str(low_npz),
            "low_resolution": model.small_size, "resolution": model.large_size,
            "sampler": up_sc.sampler, "respacing": up_sc.respacing, "steps": _num_steps(cfg, up_sc), "eta": up_sc.eta,
            "seed": sc.seed, "noise_seed": up_sc.seed, "num_samples": len(out_labels),
            "sample_config": sc.model_dump(mode="json"), "config": cfg,
            "base": read_json(base_meta) if base_meta.is_file() else None, **extra,
        }
        write_json(out_dir / f"{name}.json", meta)
        _labelled_grid(npz, out_labels, out_dir / f"{name}.png", name)
        shutil.rmtree(chunk_dir, ignore_errors=True)

    with OutputClaim(out_dir, name, world) as output:  # one writer; a refusal leaves nothing unfinished
        n_chunks, extra = generate_chunks(chunk_dir, key, up_sc, lambda idx: labels[idx], make_batch, world,
                                          progress, claim=output.claim)
        world.on_main(assemble, "assembling the upsampled samples")
    return SampleRun(out_dir / f"{name}.npz", out_dir / f"{name}.png", out_dir / f"{name}.json")


def sample_two_stage(base_unet: str | Path, upsampler: str | Path, out_dir: str | Path, sc: SampleConfig,
                     scale: float = 0.0, *, classifier_path: str | Path | None = None,
                     progress: Bar = SILENT) -> tuple[SampleRun, SampleRun]:
    """Base samples at the low resolution (guided at `scale` with sc.guidance), then upsampled.

    Returns (final run, low-res run). An interrupted run resumes both stages chunk by chunk.
    """
    base_unet, upsampler, out_dir = Path(base_unet), Path(upsampler), Path(out_dir)
    check_pair(base_unet, upsampler)
    created = not out_dir.exists()
    try:
        low = sample(base_unet, out_dir / LOW_DIR, sc, scale, classifier_path=classifier_path, progress=progress)
        final = upsample(upsampler, low.npz, out_dir, sc, progress=progress)
    except GdmError:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # the base stage was refused before it wrote anything: no empty folder left
        raise
    return final, low
