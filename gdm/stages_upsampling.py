"""The upsampling study's pipeline stages (ADM-U, paper Table 5), beside `gdm.stages`:

    train-upsampler                      runs/upsampler/         model.pt, checkpoints/, metrics.csv|json, config.yaml
    train-low@<model>  (gdm.stages.train with low_res)   runs/<model>/unet-low/
    train-classifier-low (gdm.stages.train_classifier)   runs/classifier-low/
    sample-up@<model>-<sampler>-<scale>  runs/<model>/samples-up/<sampler>-<scale>/  final npz (+ low/ base stage)
    evaluate-up@...  (gdm.stages.evaluate)               runs/eval-up/<model>-<sampler>-<scale>.json
    upsampling-report                    reports/upsampling.json|md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdm import preflight
from gdm.config import Config
from gdm.io import read_json
from gdm.progress import progress_bar
from gdm.stages import (
    SMALL_NPZ,
    OnLog,
    _log_rows,
    _register,
    dataset_dir,
    runs,
    sample_inputs,
    tracked,
    write_config,
)


def upsampler_dir(cfg: Config) -> Path:
    return runs(cfg) / "upsampler"


def upsampler_path(cfg: Config) -> Path:
    from gdm.train.diffusion import MODEL_FILE

    return upsampler_dir(cfg) / MODEL_FILE


def train_upsampler(cfg: Config, *, out: Path | None = None, resume: bool = True, progress: bool = True,
                    restart_on_mismatch: bool = False, on_log: OnLog | None = None,
                    parent_run_id: str | None = None, move_aliases: bool = False) -> dict[str, Any]:
    """Stage `train-upsampler`: the ADM-U model on (area-downsampled, full-resolution) pairs of the dataset,
    registered as `<tracking.unet_model_name>-upsampler` (aliases moved by pipeline runs)."""
    from gdm import distributed, launch
    from gdm.train.diffusion import train_diffusion
    from gdm.train.targets import UPSAMPLER

    out = Path(out) if out else upsampler_dir(cfg)
    # nothing is written (or launched) before every input is checked
    preflight.train(cfg, dataset_dir(cfg), out, net="upsampler", train_section="upsampler_train")
    tc = cfg.upsampler_train
    if launch.wanted(tc.nproc):
        args = ["--out", str(out), "--resume" if resume else "--no-resume"]
        args += ["--restart-on-mismatch"] * restart_on_mismatch + ["--quiet"] * (not progress)
        args += ["--register"] * move_aliases
        return launch.run_stage(cfg, "train-upsampler", args, nproc=tc.nproc, device=tc.device,
                                parent_run_id=parent_run_id)
    world = distributed.init(tc.device)
    cfg_file = out / "config.yaml"  # written by the trainer once its own checks pass (on_start)
    with tracked(cfg, "train-upsampler", "train-upsampler", parent_run_id, system_metrics=True) as run:
        run.log_params(cfg.flat())
        with progress_bar("train-upsampler", tc.steps, enabled=progress and world.is_main) as bar:
            result = train_diffusion(cfg, dataset_dir(cfg), out, resume=resume, progress=bar, target=UPSAMPLER,
                                     restart_on_mismatch=restart_on_mismatch, on_log=_log_rows(run, on_log),
                                     on_start=(lambda: write_config(cfg, out)) if world.is_main else None)
        for f in (Path(result["model"]), cfg_file, out / "metrics.csv"):
            run.log_artifact(f, "model")
        result["model_version"] = _register(cfg, run, f"{cfg.tracking.unet_model_name}-upsampler", "model",
                                            move_aliases)
        result["mlflow_run_id"] = run.id
    launch.report(result)
    return result


def sample_upsampled(cfg: Config, variant: str, scale: float, *, unet: Path | None = None,
                     upsampler: Path | None = None, classifier: Path | None = None, out: Path | None = None,
                     progress: bool = True, parent_run_id: str | None = None, checked: bool = False):
    """Stage `sample-up@<variant>-<sampler>-<scale>`: the variant's low-resolution model sampled at `scale`
    (classifier guidance uses the low-resolution classifier), then upsampled. Returns (final, low) runs.

    `checked`: the caller already ran `preflight.sample` (with the upsampler) over all of its scales."""
    from gdm.pipeline import scale_tag
    from gdm.upsampling import sample_two_stage

    cfg = cfg.for_sampling()  # the base stage's sample.sampler_respacing resolved
    kind = cfg.sample.guidance
    upsampler = Path(upsampler) if upsampler else upsampler_path(cfg)
    unet, classifier, out = sample_inputs(cfg, variant, scale, unet, classifier, out, low_res=True)
    if not checked:  # every input (the upsampler too) before the base stage starts
        preflight.sample(cfg, [scale], unet, classifier, [out], upsampler=upsampler)
    name = f"sample-up@{variant}-{cfg.sample.sampler}-{scale_tag(scale)}"
    with tracked(cfg, "sample-up", name, parent_run_id) as run:
        run.log_params({f"sample.{k}": v for k, v in cfg.sample.model_dump(mode="json").items()})
        run.log_params({"sample.scale": scale, "gdm.variant": variant})
        run.set_tags({"gdm.guidance": kind, "gdm.upsampled": "true"})
        with progress_bar(f"sample-up {variant} scale {scale:g}", 2 * cfg.sample.num_samples, enabled=progress) as bar:
            final, low = sample_two_stage(unet, upsampler, out, cfg.sample, scale, classifier_path=classifier,
                                          progress=bar)
        write_config(cfg, out)
        for stage, r in (("base", low), ("upsample", final)):
            meta = read_json(r.meta)
            if "seconds_per_image" in meta:
                run.log_metrics({f"{stage}_seconds_per_image": meta["seconds_per_image"]})
            for f in (r.grid, r.meta) + ((r.npz,) if r.npz.stat().st_size <= SMALL_NPZ else ()):
                run.log_artifact(f, f"samples/{stage}")
    return final, low


def upsampling_report(cfg: Config, *, parent_run_id: str | None = None) -> dict[str, Path]:
    """Stage `upsampling-report`: the Table-5 miniature (reports/upsampling.json|md), its rows as MLflow metrics."""
    from gdm.report_upsampling import table_metrics, upsampling_rows, write_upsampling

    with tracked(cfg, "report", "upsampling-report", parent_run_id) as run:
        written = write_upsampling(cfg)
        run.log_metrics(table_metrics(upsampling_rows(cfg)[0]))
        for f in written.values():
            run.log_artifact(f, "report")
    return written
