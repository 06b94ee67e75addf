"""`gdm train`, `gdm train-classifier`, `gdm sample`."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from gdm.cli import app
from gdm.cli.common import ParamsOpt, QuietOpt, SetOpt, config_from

VariantOpt = typer.Option("cond", "--variant", "-v", help="Model variant from pipeline.models / pipeline.ablations.")
OutOpt = typer.Option(None, "--out", "-o", help="Output directory (default: under pipeline.runs_dir).")
ResumeOpt = typer.Option(True, "--resume/--no-resume",
                         help="Continue from the newest checkpoint if one exists (--no-resume keeps old ones aside).")
RegisterOpt = typer.Option(
    False, "--register",
    help="Register the trained model as a new MLflow model version and move tracking.aliases (e.g. candidate) "
         "to it, as pipeline runs (dvc repro, the Prefect flows) do. Without it an ad-hoc run registers nothing.")
MismatchOpt = typer.Option(
    False, "--restart-on-mismatch",
    help="If the checkpoints were made with another configuration, keep them aside and start afresh "
         "(default: refuse with an error that lists the differing keys).")
NprocOpt = typer.Option(
    None, "--nproc", min=1,
    help="Processes on this host (data parallel through torchrun; one GPU each on CUDA). Sets train.nproc / "
         "classifier_train.nproc / sample.nproc; batch sizes stay global. Multi-node: call torchrun yourself.")


def _nproc(overrides: list[str] | None, section: str, nproc: int | None) -> list[str]:
    return list(overrides or []) + ([f"{section}.nproc={nproc}"] if nproc is not None else [])


def _reports() -> bool:
    """Whether this process prints results: not a torchrun rank other than 0, nor a job re-launched by
    `--nproc` (the launching process prints what rank 0 hands back)."""
    return os.environ.get("RANK", "0") == "0" and "GDM_RESULT_FILE" not in os.environ


def _print_result(title: str, result: dict) -> None:
    if not _reports():
        return
    c = Console()
    c.print(f"[bold]{title}[/]")
    for k, v in result.items():
        c.print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")


LowResOpt = typer.Option(
    False, "--low-res",
    help="Train at upsampler.low_resolution (the dataset area-downsampled on the fly, plus "
         "pipeline.low_res_overrides): the low-resolution base of the upsampling study (runs/<variant>/unet-low).")


@app.command()
def train(params: ParamsOpt = "params.yaml", set_: SetOpt = None, variant: str = VariantOpt,
          out: Path | None = OutOpt, resume: bool = ResumeOpt, restart_on_mismatch: bool = MismatchOpt,
          low_res: bool = LowResOpt, register: bool = RegisterOpt, nproc: int | None = NprocOpt,
          quiet: QuietOpt = False) -> None:
    """Train the diffusion UNet of one variant (EMA, mixed precision, atomic checkpoints, exact resume).

    Data parallel: `gdm train --nproc N` on one host, or `torchrun ... -m gdm train` across hosts.
    """
    from gdm import stages

    cfg = config_from(params, _nproc(set_, "train", nproc))
    result = stages.train(cfg, variant, out=out, resume=resume, progress=not quiet,
                          restart_on_mismatch=restart_on_mismatch, move_aliases=register, low_res=low_res)
    _print_result(f"train {variant}{' (low-res)' if low_res else ''}", result)


@app.command("train-upsampler")
def train_upsampler(params: ParamsOpt = "params.yaml", set_: SetOpt = None, out: Path | None = OutOpt,
                    resume: bool = ResumeOpt, restart_on_mismatch: bool = MismatchOpt,
                    register: bool = RegisterOpt, nproc: int | None = NprocOpt, quiet: QuietOpt = False) -> None:
    """Train the ADM-U upsampler (sections upsampler + upsampler_train) on (low-res, full-res) pairs of the
    dataset: the low-res input is the image area-downsampled to upsampler.low_resolution, as in the reference.
    Same trainer as `gdm train`: EMA, mixed precision, atomic checkpoints, exact resume, data parallel."""
    from gdm import stages_upsampling

    cfg = config_from(params, _nproc(set_, "upsampler_train", nproc))
    result = stages_upsampling.train_upsampler(cfg, out=out, resume=resume, progress=not quiet,
                                               restart_on_mismatch=restart_on_mismatch, move_aliases=register)
    _print_result("train-upsampler", result)


@app.command("train-classifier")
def train_classifier(params: ParamsOpt = "params.yaml", set_: SetOpt = None, out: Path | None = OutOpt,
                     resume: bool = ResumeOpt, restart_on_mismatch: bool = MismatchOpt,
                     low_res: bool = typer.Option(False, "--low-res", help="At upsampler.low_resolution, to guide "
                                                  "the low-res base models (runs/classifier-low)."),
                     register: bool = RegisterOpt, nproc: int | None = NprocOpt,
                     quiet: QuietOpt = False) -> None:
    """Train the noisy classifier on x_t (same schedule as the diffusion model); accuracy per t-quartile."""
    from gdm import stages

    cfg = config_from(params, _nproc(set_, "classifier_train", nproc))
    result = stages.train_classifier(cfg, out=out, resume=resume, progress=not quiet,
                                     restart_on_mismatch=restart_on_mismatch, move_aliases=register, low_res=low_res)
    _print_result("train-classifier" + ("-low" if low_res else ""), result)


@app.command()
def sample(
    params: ParamsOpt = "params.yaml",
    set_: SetOpt = None,
    unet: Path | None = typer.Option(None, "--unet", help="UNet checkpoint (default: the variant's model.pt)."),
    classifier: Path | None = typer.Option(None, "--classifier", help="Noisy classifier for guidance."),
    variant: str = VariantOpt,
    sampler: str | None = typer.Option(None, help="ddpm | ddim | dpmpp2m (default sample.sampler)."),
    respacing: str | None = typer.Option(None, help="'ddimN', 'N' or 'a,b,c' (default sample.respacing)."),
    eta: float | None = typer.Option(None, help="DDIM eta (0: deterministic)."),
    scale: list[float] | None = typer.Option(None, "--scale", help="Guidance scale(s); repeatable."),
    num_samples: int | None = typer.Option(None, "--num-samples", "-n"),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b"),
    seed: int | None = typer.Option(None),
    labels: str | None = typer.Option(None, help="random | balanced | a class index."),
    guidance: str | None = typer.Option(
        None, help="classifier (ADM, needs --classifier for scales > 0) | free (classifier-free: a UNet trained "
                   "with unet.class_dropout > 0). Default sample.guidance."),
    upsample: Path | None = typer.Option(
        None, "--upsample",
        help="Two-stage sampling: upsample the base samples with this ADM-U checkpoint (sample.upsample_sampler / "
             "upsample_respacing). The base then defaults to the variant's low-res model and classifier "
             "(runs/<variant>/unet-low, runs/classifier-low); the low-res stage is kept in <out>/low."),
    out: Path | None = OutOpt,
    nproc: int | None = NprocOpt,
    quiet: QuietOpt = False,
) -> None:
    """Sample a UNet (EMA weights), optionally guided (classifier or classifier-free), into ADM .npz + labelled PNG grid.

    Resumable: rerunning after an interruption generates only the missing chunks (under any number of
    processes: chunks are split over torchrun ranks and the npz is the same).
    """
    from gdm import preflight, stages, stages_upsampling

    overrides = _nproc(set_, "sample", nproc)
    for key, value in (("sampler", sampler), ("respacing", respacing), ("eta", eta), ("num_samples", num_samples),
                       ("batch_size", batch_size), ("seed", seed), ("labels", labels), ("guidance", guidance)):
        if value is not None:
            overrides.append(f"sample.{key}={value}")
    if respacing is not None:  # explicit timesteps for whichever sampler: no per-sampler entry applies
        overrides.append("sample.sampler_respacing={}")
    if scale:
        overrides.append(f"sample.scales=[{', '.join(map(str, scale))}]")
    cfg = config_from(params, overrides).for_sampling()
    scales = cfg.sample.scales
    inputs = [stages.sample_inputs(cfg, variant, s, unet, classifier, out, low_res=upsample is not None)
              for s in scales]
    guide = next((c for _, c, _ in inputs if c is not None), None)
    # every input of every scale (a mistyped --classifier or --upsample too) is checked before the first sample
    preflight.sample(cfg, scales, inputs[0][0], guide, [o for _, _, o in inputs], upsampler=upsample)
    c = Console(quiet=not _reports())
    for s in scales:
        if upsample is not None:
            final, low = stages_upsampling.sample_upsampled(cfg, variant, s, unet=unet, upsampler=upsample,
                                                            classifier=classifier, out=out, progress=not quiet,
                                                            checked=True)
            c.print(f"scale {s:g}: {final.npz}  grid {final.grid}  (low-res stage: {low.npz})")
            continue
        run = stages.sample(cfg, variant, s, unet=unet, classifier=classifier, out=out, progress=not quiet,
                            checked=True)
        c.print(f"scale {s:g}: {run.npz}  grid {run.grid}")
