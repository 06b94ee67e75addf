"""One function per pipeline stage: typed config + paths in, paths/metrics out.

The CLI, `dvc.yaml` (through the CLI) and the Prefect flows all call these functions, so there is
one code path whatever runs the pipeline. Every stage writes the resolved config beside what it
produces (`config.yaml`) and logs an MLflow run (`tracked`). Layout under `pipeline.runs_dir`
(paths come from `gdm.pipeline`):

    <variant>/unet/                    model.pt, checkpoints/, metrics.csv|json, config.yaml
    classifier/                        classifier.pt, checkpoints/, metrics.csv|json, config.yaml
    evaluator/                         evaluator.pt, metrics.json, config.yaml
    <variant>/samples/<sampler>-<s>/   <sampler>-<respacing>-scale<s>.npz|.png|.json, config.yaml
    eval/<variant>-<sampler>-<s>.json  metrics, numbers only (ablation-eval/ for the ablations)
    eval-info/<variant>-<sampler>-<s>.json|.config.yaml   what the numbers came from (paths, extractor
                                       hash, MLflow run id) and the resolved config: kept out of eval/,
                                       which the report stage depends on (DVC sees only tracked files there)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from gdm import preflight
from gdm.config import Config
from gdm.io import read_json, write_bytes
from gdm.progress import progress_bar

OnLog = Callable[[int, dict[str, Any]], None]


def write_config_as(cfg: Config, path: Path) -> Path:
    write_bytes(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    return Path(path)


def write_config(cfg: Config, directory: Path) -> Path:
    return write_config_as(cfg, Path(directory) / "config.yaml")


def variant_config(cfg: Config, name: str) -> Config:
    return cfg.variant(name)


def dataset_dir(cfg: Config) -> Path | str:
    """The prepared dataset: a local Path, or an s3:// URL (str)."""
    return cfg.data.prepared_dir


def dataset_hash(cfg: Config) -> str | None:
    """The prepared dataset's content hash, or None when it is not prepared (yet)."""
    from gdm.data.dataset import read_manifest
    from gdm.errors import DataError

    try:
        return read_manifest(dataset_dir(cfg)).content_hash
    except DataError:
        return None


def runs(cfg: Config) -> Path:
    return Path(cfg.pipeline.runs_dir)


def unet_dir(cfg: Config, variant: str, low_res: bool = False) -> Path:
    return runs(cfg) / variant / ("unet-low" if low_res else "unet")


def classifier_dir(cfg: Config, low_res: bool = False) -> Path:
    return runs(cfg) / ("classifier-low" if low_res else "classifier")


def prepare(cfg: Config, progress: bool = True) -> Path:
    """Stage `prepare`: dataset source -> data/prepared/<dataset>/ (shards, manifest, grid)."""
    from gdm.data.prepare import prepare_dataset
    from gdm.data.sources import open_source
    from gdm.io import check_dir_target

    check_dir_target(cfg.data.prepared_dir, "data.out_dir: dataset directory")
    preflight.tracking(cfg.tracking)
    source = open_source(cfg.data.source, cfg.data.path, cfg.data.labels, max_pixels=cfg.data.max_image_pixels,
                         num_classes=cfg.data.num_classes)  # opened once (an archive is read once)
    with progress_bar(f"prepare {cfg.data.dataset_name} (images)", source.count, enabled=progress) as bar:
        return prepare_dataset(cfg.data, progress=bar, source=source)


@contextlib.contextmanager
def tracked(cfg: Config, stage: str, name: str, parent_run_id: str | None = None,
            system_metrics: bool = False) -> Iterator[Any]:
    """An MLflow run for one stage (a child of `parent_run_id` or of $GDM_PARENT_RUN_ID when set).

    Tracking never loses work: with tracking disabled or its backend unreachable the handle is a
    no-op and the stage's local outputs are all there is (the tracker says so once).
    """
    from gdm import distributed
    from gdm.tracking import Tracker, default_tags

    parent = parent_run_id or os.environ.get("GDM_PARENT_RUN_ID") or None
    if not distributed.current().is_main:  # under torchrun only rank 0 talks to MLflow
        cfg = cfg.with_overrides({"tracking.enabled": False})
    data_hash = dataset_hash(cfg)
    tracker = Tracker(cfg.tracking, artifact_location=cfg.tracking.artifact_location)
    run = tracker.start_run(name, parent_run_id=parent, tags=default_tags(stage, data_hash))
    with run, (run.system_metrics() if system_metrics else contextlib.nullcontext()):
        yield run


def _log_rows(run, on_log: OnLog | None) -> OnLog:
    def log(step: int, row: dict[str, Any]) -> None:
        run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
        if on_log:
            on_log(step, row)

    return log


def _register(cfg: Config, run, name: str, artifact_path: str, move_aliases: bool) -> str | None:
    """A new version of registered model `name`; `tracking.aliases` move to it only for pipeline runs
    (`move_aliases`: the flows, `dvc repro`, `gdm train --register`), never for an ad-hoc training run."""
    if not (cfg.tracking.register_models and move_aliases):
        return None
    return run.register_model(name, artifact_path, cfg.tracking.aliases)


def variant_tags(cfg: Config, variant: str) -> dict[str, str]:
    """Tags that say which variant a run belongs to; for an ablation also its name and the knobs it changes."""
    import json

    p = cfg.pipeline
    if variant not in p.ablations:
        return {"gdm.variant": variant, "gdm.kind": "model"}
    return {"gdm.variant": variant, "gdm.kind": "ablation", "gdm.ablation": variant,
            "gdm.ablation_knobs": json.dumps(p.ablations[variant], sort_keys=True),
            "gdm.ablation_base": json.dumps(p.ablation_base, sort_keys=True)}


def train(cfg: Config, variant: str, *, out: Path | None = None, resume: bool = True, progress: bool = True,
          restart_on_mismatch: bool = False, on_log: OnLog | None = None,
          parent_run_id: str | None = None, move_aliases: bool = False, low_res: bool = False) -> dict[str, Any]:
    """Stage `train@<variant>`: the diffusion UNet of one variant. The run logs an MLflow pyfunc model
    (`mlflow.pyfunc.load_model(...)` samples images); a pipeline run (`move_aliases`) registers it as a
    version of `gdm-unet-<variant>` and points `tracking.aliases` at it. With `train.nproc` > 1 the
    stage re-launches itself through torchrun (gdm.launch). With `low_res`: stage `train-low@<variant>`,
    the same model at the upsampler's low resolution (the base of the upsampling study), registered as
    `gdm-unet-<variant>-low`."""
    from gdm import distributed, launch
    from gdm.train.diffusion import train_diffusion

    vcfg = cfg.low_res(variant) if low_res else variant_config(cfg, variant)
    stage, suffix = ("train-low", "-low") if low_res else ("train", "")
    out = Path(out) if out else unet_dir(cfg, variant, low_res)
    preflight.train(vcfg, dataset_dir(cfg), out)  # nothing is written (or launched) before every input is checked
    if launch.wanted(vcfg.train.nproc):
        args = ["--variant", variant, "--out", str(out), "--resume" if resume else "--no-resume"]
        args += ["--restart-on-mismatch"] * restart_on_mismatch + ["--quiet"] * (not progress)
        args += ["--register"] * move_aliases + ["--low-res"] * low_res
        return launch.run_stage(cfg, "train", args, nproc=vcfg.train.nproc, device=vcfg.train.device,
                                parent_run_id=parent_run_id)
    world = distributed.init(vcfg.train.device)
    cfg_file = out / "config.yaml"  # written by the trainer once its own checks pass (on_start)
    with tracked(vcfg, stage, f"{stage}@{variant}", parent_run_id, system_metrics=True) as run:
        run.log_params(vcfg.flat())
        run.set_tags(variant_tags(cfg, variant))
        with progress_bar(f"{stage} {variant}", vcfg.train.steps, enabled=progress and world.is_main) as bar:
            result = train_diffusion(vcfg, dataset_dir(cfg), out, resume=resume, progress=bar,
                                     restart_on_mismatch=restart_on_mismatch, on_log=_log_rows(run, on_log),
                                     on_start=(lambda: write_config(vcfg, out)) if world.is_main else None)
        for f in (cfg_file, out / "metrics.csv"):
            run.log_artifact(f, "files")
        run.log_sampler_model(Path(result["model"]), "model", vcfg.sample)
        result["model_version"] = _register(vcfg, run, f"{cfg.tracking.unet_model_name}-{variant}{suffix}", "model",
                                            move_aliases)
        result["mlflow_run_id"] = run.id
    launch.report(result)
    return result


def train_classifier(cfg: Config, *, out: Path | None = None, resume: bool = True, progress: bool = True,
                     restart_on_mismatch: bool = False, on_log: OnLog | None = None,
                     parent_run_id: str | None = None, move_aliases: bool = False,
                     low_res: bool = False) -> dict[str, Any]:
    """Stage `train-classifier`: the noisy classifier used for guidance (`train-classifier-low` with
    `low_res`: at the upsampler's low resolution, to guide the low-resolution base models)."""
    from gdm import distributed, launch
    from gdm.train.classifier import train_classifier as run_training

    name = "train-classifier-low" if low_res else "train-classifier"
    model_name = cfg.tracking.classifier_model_name + ("-low" if low_res else "")
    out = Path(out) if out else classifier_dir(cfg, low_res)
    preflight.train_classifier(cfg, dataset_dir(cfg), out)
    tc = cfg.classifier_train
    if launch.wanted(tc.nproc):
        args = ["--out", str(out), "--resume" if resume else "--no-resume"]
        args += ["--restart-on-mismatch"] * restart_on_mismatch + ["--quiet"] * (not progress)
        args += ["--register"] * move_aliases + ["--low-res"] * low_res
        return launch.run_stage(cfg, "train-classifier", args, nproc=tc.nproc, device=tc.device,
                                parent_run_id=parent_run_id)
    cfg = cfg.low_res(None) if low_res else cfg
    world = distributed.init(tc.device)
    cfg_file = out / "config.yaml"  # written by the trainer once its own checks pass (on_start)
    with tracked(cfg, name, name, parent_run_id, system_metrics=True) as run:
        run.log_params(cfg.flat())
        with progress_bar(name, tc.steps, enabled=progress and world.is_main) as bar:
            result = run_training(cfg, dataset_dir(cfg), out, resume=resume, progress=bar,
                                  restart_on_mismatch=restart_on_mismatch, on_log=_log_rows(run, on_log),
                                  on_start=(lambda: write_config(cfg, out)) if world.is_main else None)
        for f in (Path(result["model"]), cfg_file, out / "metrics.csv"):
            run.log_artifact(f, "model")
        result["model_version"] = _register(cfg, run, model_name, "model", move_aliases)
        result["mlflow_run_id"] = run.id
    launch.report(result)
    return result


def classifier_path(cfg: Config, low_res: bool = False) -> Path:
    from gdm.train.classifier import MODEL_FILE

    return classifier_dir(cfg, low_res) / MODEL_FILE


def unet_path(cfg: Config, variant: str, low_res: bool = False) -> Path:
    from gdm.train.diffusion import MODEL_FILE

    return unet_dir(cfg, variant, low_res) / MODEL_FILE


SMALL_NPZ = 8 << 20  # sample files up to this size are logged to MLflow as artifacts


def sample_inputs(cfg: Config, variant: str, scale: float, unet: Path | None = None,
                  classifier: Path | None = None, out: Path | None = None,
                  low_res: bool = False) -> tuple[Path, Path | None, Path]:
    """(UNet, classifier or None, output directory) of one sampling stage, defaults filled in (`low_res`:
    the two-stage defaults: the variant's low-res model and classifier, runs/<variant>/samples-up/)."""
    from gdm.pipeline import sample_dir, sample_up_dir

    unet = Path(unet) if unet else unet_path(cfg, variant, low_res)
    kind = cfg.sample.guidance
    if classifier is None and scale > 0 and kind == "classifier":
        classifier = classifier_path(cfg, low_res)
    if low_res:
        out = Path(out) if out else Path(sample_up_dir(cfg, variant, cfg.sample.sampler, scale))
    else:
        out = Path(out) if out else Path(sample_dir(cfg, variant, cfg.sample.sampler, scale, kind))
    return unet, (Path(classifier) if classifier is not None else None), out


def sample(cfg: Config, variant: str, scale: float, *, unet: Path | None = None, classifier: Path | None = None,
           out: Path | None = None, progress: bool = True, parent_run_id: str | None = None,
           checked: bool = False):
    """Stage `sample@<variant>-<sampler>-<scale>`: samples of one variant at one guidance scale.

    `checked`: the caller already ran `preflight.sample` over all of its scales."""
    from gdm import distributed, launch
    from gdm.pipeline import sample_stage_prefix, scale_tag
    from gdm.sampling import SampleRun
    from gdm.sampling import sample as run_sampling

    cfg = cfg.for_sampling()  # sample.sampler_respacing resolved: what is logged is what was sampled
    kind = cfg.sample.guidance
    unet, classifier, out = sample_inputs(cfg, variant, scale, unet, classifier, out)
    if not checked:
        preflight.sample(cfg, [scale], unet, classifier, [out])
    if launch.wanted(cfg.sample.nproc):  # the resolved config (sample.guidance included) travels as the params file
        args = ["--variant", variant, "--scale", repr(float(scale)), "--unet", str(unet), "--out", str(out)]
        args += ["--classifier", str(classifier)] * (classifier is not None) + ["--quiet"] * (not progress)
        r = launch.run_stage(cfg, "sample", args, nproc=cfg.sample.nproc, device=cfg.sample.device,
                             parent_run_id=parent_run_id)
        return SampleRun(Path(r["npz"]), Path(r["grid"]), Path(r["meta"]))
    world = distributed.init(cfg.sample.device)
    name = f"{sample_stage_prefix(kind)}@{variant}-{cfg.sample.sampler}-{scale_tag(scale)}"
    with tracked(cfg, "sample", name, parent_run_id) as run:
        run.log_params({f"sample.{k}": v for k, v in cfg.sample.model_dump(mode="json").items()})
        run.log_params({"sample.scale": scale, "gdm.variant": variant})
        run.set_tags({**variant_tags(cfg, variant), "gdm.guidance": kind})
        with progress_bar(f"sample {variant} {kind} scale {scale:g}", cfg.sample.num_samples,
                          enabled=progress and world.is_main) as bar:
            result = run_sampling(unet, out, cfg.sample, scale, classifier_path=classifier, progress=bar)
        if world.is_main:
            write_config(cfg, out)
            meta = read_json(result.meta)
            if "seconds_per_image" in meta:
                run.log_metrics({"seconds_per_image": meta["seconds_per_image"]})
            small = result.npz.stat().st_size <= SMALL_NPZ
            for f in (result.grid, result.meta) + ((result.npz,) if small else ()):
                run.log_artifact(f, "samples")
    launch.report({"npz": str(result.npz), "grid": str(result.grid), "meta": str(result.meta)})
    return result


def evaluator_path(cfg: Config) -> Path:
    from gdm.evaluation import EVALUATOR_FILE

    return runs(cfg) / "evaluator" / EVALUATOR_FILE


def train_evaluator(cfg: Config, *, out: Path | None = None, progress: bool = True,
                    parent_run_id: str | None = None) -> dict[str, Any]:
    """Stage `train-evaluator`: the independent clean classifier that scores samples."""
    from gdm.evaluation import train_evaluator_model

    out = Path(out) if out else runs(cfg) / "evaluator"
    preflight.train_evaluator(cfg, dataset_dir(cfg), out)
    with tracked(cfg, "train-evaluator", "train-evaluator", parent_run_id) as run:
        run.log_params({f"evaluator.{k}": v for k, v in cfg.evaluator.model_dump().items()})
        with progress_bar("train-evaluator", cfg.evaluator.steps, enabled=progress) as bar:
            result = train_evaluator_model(cfg, dataset_dir(cfg), out, progress=bar)
        write_config(cfg, out)  # after the work: a refusal on the way leaves no folder behind
        run.log_metrics({"val_accuracy": result["val_accuracy"]})
        run.log_artifact(Path(result["model"]), "model")
        result["mlflow_run_id"] = run.id
    return result


def _sample_meta(samples: Path) -> dict[str, Any]:
    """The JSON `gdm sample` writes beside its .npz (sampler, respacing, scale, seed, the UNet's config)."""
    from gdm.evaluation import sample_file

    try:
        meta = Path(sample_file(samples)).with_suffix(".json")
    except Exception:
        return {}
    return read_json(meta) if meta.is_file() else {}


def _variant_of(samples: Path) -> str | None:
    """`<runs>/<variant>/samples[-up]/<sampler>-<scale>[/file.npz]` -> variant (None elsewhere)."""
    parts = Path(samples).parts
    for d in ("samples", "samples-up"):
        if d in parts[1:]:
            return parts[parts.index(d) - 1]
    return None


def guidance_kind(meta: dict[str, Any], scale: float) -> str:
    """classifier | free | none; a sampler that records `guidance` in its sample JSON wins."""
    return str(meta.get("guidance") or ("classifier" if scale > 0 else "none"))


def run_label(variant: str, sampler: str, respacing: str, scale: float, guidance: str = "classifier") -> str:
    """`cond/ddim25/scale2.0`: the evaluate run's name, unique per scored result (classifier-free guidance:
    `cfg/ddim25/free2.0`)."""
    from gdm.pipeline import scale_tag

    steps = respacing if str(respacing).startswith(sampler) else f"{sampler}{respacing}"
    return f"{variant}/{steps}/{'free' if guidance == 'free' else 'scale'}{scale_tag(scale)}"


def evaluation_params(cfg: Config, variant: str | None, meta: dict[str, Any]) -> dict[str, Any]:
    """What a scored result is filtered and grouped by in MLflow, under params.yaml names: the variant and
    its architecture (unet.*), sampler, respacing, scale, guidance kind, seed, num_samples, eval settings."""
    sc = meta.get("sample_config") or cfg.sample.model_dump(mode="json")
    scale = float(meta.get("scale", 0.0))
    unet = (meta.get("config") or {}).get("unet")
    if unet is None and variant is not None:
        try:
            unet = cfg.variant(variant).unet.model_dump(mode="json")
        except Exception:
            unet = None
    params: dict[str, Any] = {"gdm.variant": variant or "unknown", "sample.sampler": meta.get("sampler", sc.get("sampler")),
                              "sample.respacing": meta.get("respacing", sc.get("respacing")), "sample.scale": scale,
                              "sample.guidance": guidance_kind(meta, scale), "sample.seed": meta.get("seed", sc.get("seed")),
                              "sample.num_samples": meta.get("num_samples", sc.get("num_samples")),
                              "sample.eta": sc.get("eta"), "sample.labels": sc.get("labels")}
    params.update({f"unet.{k}": v for k, v in (unet or {}).items()})
    params.update({f"eval.{k}": v for k, v in cfg.eval.model_dump(mode="json").items()})
    return params


def info_path(out: Path) -> Path:
    """runs/eval/x.json -> runs/eval-info/x.json (ablation-eval -> ablation-eval-info)."""
    out = Path(out)
    return out.parent.with_name(out.parent.name + "-info") / out.name


def numeric(metrics: dict[str, Any]) -> dict[str, float | int]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def evaluate(cfg: Config, samples: Path, *, reference: Path | None = None, out: Path | None = None,
             evaluator: Path | None = None, require_accuracy: bool = False, parent_run_id: str | None = None,
             tags: dict[str, str] | None = None, variant: str | None = None, scale: float | None = None,
             ablation: bool = False) -> dict[str, Any]:
    """Stage `evaluate`: FID, sFID, IS, precision/recall, KID, accuracy of one sample file.

    One MLflow run per scored result, named `<variant>/<respacing>/scale<s>` and carrying what it is
    compared by (`evaluation_params`). `out` gets the numbers only (for `dvc metrics show`); where they
    came from (paths, extractor hash, run id) and the resolved config go to `info_path(out)`."""
    from gdm.evaluation import evaluate_file
    from gdm.io import write_json

    reference = reference or dataset_dir(cfg)
    evaluator = evaluator or (evaluator_path(cfg) if cfg.eval.features == "evaluator" else None)
    preflight.evaluate(cfg, Path(samples), Path(out) if out is not None else None, evaluator)
    meta = _sample_meta(Path(samples))
    upsampled = meta.get("stage") == "upsample"  # a two-stage result: its base stage says how it was sampled
    if upsampled:
        meta = {**(meta.get("base") or {}), "upsample": {k: meta.get(k) for k in ("upsampler", "sampler", "respacing",
                                                                                "low_resolution", "resolution")}}
    variant = variant or _variant_of(Path(samples))
    if scale is not None:
        meta.setdefault("scale", float(scale))
    scale = float(meta.get("scale", 0.0))
    params = evaluation_params(cfg, variant, meta)
    if upsampled:
        params.update({"sample.upsample_sampler": meta["upsample"]["sampler"],
                       "sample.upsample_respacing": meta["upsample"]["respacing"],
                       "upsampler.low_resolution": meta["upsample"]["low_resolution"]})
        tags = {"gdm.upsampled": "true", **(tags or {})}
    label = f"{variant or 'unknown'}/upsampled" if upsampled else variant or "unknown"
    name = run_label(label, params["sample.sampler"] or "?", params["sample.respacing"] or "?", scale,
                     params["sample.guidance"])
    with tracked(cfg, "evaluate", name, parent_run_id) as run:
        metrics = evaluate_file(cfg, samples, reference, evaluator=evaluator, require_accuracy=require_accuracy)
        run.log_params(params)
        run.log_params({"samples": metrics["samples"], "reference": metrics["reference"]})
        run.log_metrics(numeric(metrics))
        run.set_tags({**(variant_tags(cfg, variant) if variant else {}), "gdm.result": name,
                      "gdm.features": metrics.get("features", ""), **(tags or {})})
        metrics["mlflow_run_id"] = run.id
        if out is not None:
            out = Path(out)
            write_json(out, numeric(metrics))
            info = info_path(out)
            write_json(info, {k: v for k, v in metrics.items() if k not in numeric(metrics)} | {"run_name": name})
            write_config_as(cfg, info.with_suffix(".config.yaml"))
            run.log_artifact(out, "metrics")
            run.log_artifact(info, "metrics")
    return metrics


def report(cfg: Config, *, ablations: bool = False, parent_run_id: str | None = None) -> dict[str, Path]:
    """Stage `report` / `ablation-report`: summary tables and plots across runs."""
    from gdm.report import write_ablation, write_summary

    with tracked(cfg, "report", "ablation-report" if ablations else "report", parent_run_id) as run:
        written = write_ablation(cfg) if ablations else write_summary(cfg)
        for f in written.values():
            run.log_artifact(f, "report")
    return written
