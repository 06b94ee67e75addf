"""The pipeline DAG, declared once.

`stage_graph(cfg)` expands the stages for the configured variants, samplers and guidance scales:
names (as DVC names them: `train@cond`, `sample@cond-ddim-1.0`), the CLI command DVC runs, the
dependencies, params and outputs, and the stage function the Prefect flows run. `dvc.yaml`
expresses the same graph with `foreach`/`matrix`; a test checks that the two agree.

    prepare -> train@<model> ---------------------------> sample@<model>-<sampler>-<scale> -> evaluate@... -> report
            -> train-classifier ------------------------^                                  ^
            -> train-evaluator ----------------------------------------------------------/
    classifier-free guidance (models in pipeline.free_guidance, no classifier):
            train@<model> -> sample-free@<model>-<sampler>-<scale> -> evaluate-free@... -> report
    upsampling (ADM-U, Table 5; models in pipeline.upsampling_models):
            train-low@<model>, train-classifier-low, train-upsampler -> sample-up@<model>-<sampler>-<scale>
            -> evaluate-up@... -> upsampling-report (with the direct models' evaluate@... rows)
    ablations: train@<ablation> -> sample-ablation@<ablation> -> evaluate-ablation@<ablation> -> ablation-report
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gdm.config import Config


@dataclass(frozen=True)
class Stage:
    name: str  # DVC's name for the (expanded) stage
    kind: str  # prepare | train | train-classifier | train-evaluator | train-upsampler | sample | sample-up | evaluate
    #            | report | upsampling-report | ablation-report
    args: dict = field(default_factory=dict)  # what the stage function needs: variant, sampler, scale
    cmd: str = ""
    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()  # names of stages whose outputs this one reads


def scale_tag(scale: float) -> str:
    """How a guidance scale appears in stage names and paths (as DVC renders a YAML float: 1.0)."""
    return repr(float(scale))


def paths(cfg: Config) -> dict[str, str]:
    runs = cfg.pipeline.runs_dir
    return {
        "data": str(cfg.data.prepared_dir),  # a local path or an s3:// URL (Path would mangle "s3://")
        "classifier": f"{runs}/classifier",
        "evaluator": f"{runs}/evaluator",
        "reports": cfg.pipeline.reports_dir,
    }


def unet_run(cfg: Config, variant: str) -> str:
    return f"{cfg.pipeline.runs_dir}/{variant}/unet"


def _kind_tag(guidance: str) -> str:
    """Classifier guidance keeps the plain names; classifier-free runs carry `free-` before the scale."""
    return "" if guidance == "classifier" else f"{guidance}-"


def sample_stage_prefix(guidance: str) -> str:
    return "sample" if guidance == "classifier" else f"sample-{guidance}"


def sample_dir(cfg: Config, variant: str, sampler: str, scale: float, guidance: str = "classifier") -> str:
    return f"{cfg.pipeline.runs_dir}/{variant}/samples/{sampler}-{_kind_tag(guidance)}{scale_tag(scale)}"


def sample_up_dir(cfg: Config, variant: str, sampler: str, scale: float) -> str:
    return f"{cfg.pipeline.runs_dir}/{variant}/samples-up/{sampler}-{scale_tag(scale)}"


def eval_up_dir(cfg: Config) -> str:
    return f"{cfg.pipeline.runs_dir}/eval-up"


def eval_up_file(cfg: Config, variant: str, sampler: str, scale: float) -> str:
    return f"{eval_up_dir(cfg)}/{variant}-{sampler}-{scale_tag(scale)}.json"


def eval_dir(cfg: Config, ablation: bool = False) -> str:
    return f"{cfg.pipeline.runs_dir}/{'ablation-eval' if ablation else 'eval'}"


def eval_file(cfg: Config, variant: str, sampler: str, scale: float, ablation: bool = False,
              guidance: str = "classifier") -> str:
    return f"{eval_dir(cfg, ablation)}/{variant}-{sampler}-{_kind_tag(guidance)}{scale_tag(scale)}.json"


def _train(cfg: Config, variant: str, ablation: bool = False) -> Stage:
    run = unet_run(cfg, variant)
    p = paths(cfg)
    # only this variant's overrides: adding a variant retrains nothing else
    params = ("pipeline.ablation_base", f"pipeline.ablations.{variant}") if ablation else (f"pipeline.models.{variant}",)
    return Stage(
        f"train{'-ablation' if ablation else ''}@{variant}", "train", {"variant": variant},
        cmd=f"gdm train --quiet --restart-on-mismatch --register --variant {variant}",
        deps=(p["data"],), params=("unet", "diffusion", "train") + READER_PARAMS + params,
        outs=(f"{run}/model.pt", f"{run}/checkpoints"), metrics=(f"{run}/metrics.json",),
        plots=(f"{run}/metrics.csv",), upstream=("prepare",),
    )


# The data keys that shape the prepared bytes (not the reader's keys, nor worker counts or --overwrite),
# and the reader's keys, which shape the training batches.
PREPARE_PARAMS = tuple(f"data.{k}" for k in ("source", "path", "name", "out_dir", "resolution", "channels",
                                             "val_fraction", "seed", "labels", "on_bad_image", "shard_size",
                                             "row_group_size"))
READER_PARAMS = ("data.random_flip", "data.shuffle_window")

# What determines a sample file (per-sample seeding: batch and chunk sizes do not; the scale and the
# sampler come from the stage itself).
SAMPLE_PARAMS = ("sample.respacing", "sample.sampler_respacing", "sample.eta", "sample.num_samples", "sample.seed",
                 "sample.labels", "sample.clip_denoised", "sample.use_ema")


def _sample_eval(cfg: Config, variant: str, sampler: str, scale: float, ablation: bool = False,
                 guidance: str = "classifier") -> list[Stage]:
    p = paths(cfg)
    free = guidance == "free"
    suffix = "-ablation" if ablation else "-free" if free else ""
    tag = variant if ablation else f"{variant}-{sampler}-{scale_tag(scale)}"
    sdir, efile = sample_dir(cfg, variant, sampler, scale, guidance), eval_file(cfg, variant, sampler, scale,
                                                                                ablation, guidance)
    args = {"variant": variant, "sampler": sampler, "scale": float(scale), "guidance": guidance}
    guided = () if ablation or free else (f"{p['classifier']}/classifier.pt",)  # ablations sample unguided
    kind_opt = " --guidance free" if free else ""
    sample = Stage(
        f"sample{suffix}@{tag}", "sample", args,
        cmd=f"gdm sample --quiet --variant {variant} --sampler {sampler}{kind_opt} --scale {scale_tag(scale)} "
            f"--out {sdir}",
        deps=(f"{unet_run(cfg, variant)}/model.pt",) + guided,
        params=SAMPLE_PARAMS + (("sample.sampler",) if ablation else ()), outs=(sdir,),
        upstream=(f"train-ablation@{variant}",) if ablation else (f"train@{variant}",) if free else (
            f"train@{variant}", "train-classifier"),
    )
    evaluate = Stage(
        f"evaluate{suffix}@{tag}", "evaluate", args,
        cmd=f"gdm evaluate --samples {sdir} --out {efile}",
        deps=(sdir, f"{p['evaluator']}/evaluator.pt", p["data"]), params=("eval",),
        metrics=(efile,), upstream=(f"sample{suffix}@{tag}", "train-evaluator"),
    )
    return [sample, evaluate]


# The low resolution of the upsampling study depends on these keys (beside the trained sections).
LOW_RES_PARAMS = ("upsampler.low_resolution", "upsampler_train.resolution", "pipeline.low_res_overrides")
UPSAMPLE_PARAMS = ("sample.upsample_sampler", "sample.upsample_respacing")


def _upsampling(cfg: Config, direct_evals: list[Stage]) -> list[Stage]:
    """ADM-U (Table 5): low-res base models + low-res classifier + upsampler, two-stage samples, report."""
    p, runs = paths(cfg), cfg.pipeline.runs_dir
    up, clf = f"{runs}/upsampler", f"{runs}/classifier-low"
    stages = [
        Stage("train-upsampler", "train-upsampler", cmd="gdm train-upsampler --quiet --restart-on-mismatch --register",
              deps=(p["data"],), params=("upsampler", "upsampler_train", "diffusion") + READER_PARAMS,
              outs=(f"{up}/model.pt", f"{up}/checkpoints"), metrics=(f"{up}/metrics.json",),
              plots=(f"{up}/metrics.csv",), upstream=("prepare",)),
        Stage("train-classifier-low", "train-classifier", {"low_res": True},
              cmd="gdm train-classifier --quiet --restart-on-mismatch --register --low-res", deps=(p["data"],),
              params=("classifier", "classifier_train", "diffusion") + READER_PARAMS + LOW_RES_PARAMS,
              outs=(f"{clf}/classifier.pt", f"{clf}/checkpoints"), metrics=(f"{clf}/metrics.json",),
              plots=(f"{clf}/metrics.csv",), upstream=("prepare",)),
    ]
    evals = []
    for v in cfg.pipeline.upsampling_models:
        low = f"{runs}/{v}/unet-low"
        stages.append(Stage(
            f"train-low@{v}", "train", {"variant": v, "low_res": True},
            cmd=f"gdm train --quiet --restart-on-mismatch --register --variant {v} --low-res", deps=(p["data"],),
            params=("unet", "diffusion", "train") + READER_PARAMS + (f"pipeline.models.{v}",) + LOW_RES_PARAMS,
            outs=(f"{low}/model.pt", f"{low}/checkpoints"), metrics=(f"{low}/metrics.json",),
            plots=(f"{low}/metrics.csv",), upstream=("prepare",),
        ))
        for s in cfg.pipeline.samplers:
            for c in cfg.sample.scales:
                tag, sdir, efile = f"{v}-{s}-{scale_tag(c)}", sample_up_dir(cfg, v, s, c), eval_up_file(cfg, v, s, c)
                args = {"variant": v, "sampler": s, "scale": float(c), "upsampled": True}
                stages.append(Stage(
                    f"sample-up@{tag}", "sample-up", args,
                    cmd=f"gdm sample --quiet --variant {v} --sampler {s} --scale {scale_tag(c)} "
                        f"--upsample {up}/model.pt --out {sdir}",
                    deps=(f"{low}/model.pt", f"{clf}/classifier.pt", f"{up}/model.pt"),
                    params=SAMPLE_PARAMS + UPSAMPLE_PARAMS, outs=(sdir,),
                    upstream=(f"train-low@{v}", "train-classifier-low", "train-upsampler"),
                ))
                evals.append(Stage(
                    f"evaluate-up@{tag}", "evaluate", args, cmd=f"gdm evaluate --samples {sdir} --out {efile}",
                    deps=(sdir, f"{p['evaluator']}/evaluator.pt", p["data"]), params=("eval",),
                    metrics=(efile,), upstream=(f"sample-up@{tag}", "train-evaluator"),
                ))
                stages.append(evals[-1])
    stages.append(Stage(
        "upsampling-report", "upsampling-report", cmd="gdm report --upsampling --quiet",
        deps=(eval_dir(cfg), eval_up_dir(cfg)),
        params=("pipeline.upsampling_models", "pipeline.samplers", "sample.scales"),
        metrics=(f"{p['reports']}/upsampling_metrics.json",),
        outs=(f"{p['reports']}/upsampling.json", f"{p['reports']}/upsampling.md"),
        upstream=tuple(e.name for e in direct_evals + evals),
    ))
    return stages


def stage_graph(cfg: Config, *, ablations: bool = True, upsampling: bool = True) -> list[Stage]:
    """All stages in a valid execution order (upstream first). `upsampling`/`ablations`: include the
    upsampling study (ADM-U) / the architecture ablations (dvc.yaml always has both)."""
    p = paths(cfg)
    pc = cfg.pipeline
    stages = [
        Stage("prepare", "prepare", cmd="gdm prepare --quiet", params=PREPARE_PARAMS, outs=(p["data"],)),
        Stage("train-classifier", "train-classifier", cmd="gdm train-classifier --quiet --restart-on-mismatch --register", deps=(p["data"],),
              params=("classifier", "classifier_train", "diffusion") + READER_PARAMS,
              outs=(f"{p['classifier']}/classifier.pt", f"{p['classifier']}/checkpoints"),
              metrics=(f"{p['classifier']}/metrics.json",), plots=(f"{p['classifier']}/metrics.csv",),
              upstream=("prepare",)),
        Stage("train-evaluator", "train-evaluator", cmd="gdm train-evaluator --quiet", deps=(p["data"],),
              params=("evaluator",), outs=(f"{p['evaluator']}/evaluator.pt",),
              metrics=(f"{p['evaluator']}/metrics.json",), upstream=("prepare",)),
    ]
    stages += [_train(cfg, v) for v in pc.models]
    evals = []
    for v in pc.models:
        for s in pc.samplers:
            for c in cfg.sample.scales:
                pair = _sample_eval(cfg, v, s, c)
                stages += pair
                evals.append(pair[1])
    for v in pc.free_guidance:  # classifier-free guidance on the same scale list
        for s in pc.samplers:
            for c in cfg.sample.scales:
                pair = _sample_eval(cfg, v, s, c, guidance="free")
                stages += pair
                evals.append(pair[1])
    stages.append(Stage(
        "report", "report", cmd="gdm report --quiet", deps=(eval_dir(cfg),),
        params=("pipeline.models", "pipeline.samplers", "pipeline.free_guidance", "sample.scales"),
        metrics=(f"{p['reports']}/metrics.json",),
        plots=(f"{p['reports']}/summary.json", f"{p['reports']}/tradeoff.png", f"{p['reports']}/tradeoff.csv",
               f"{p['reports']}/losses.png", f"{p['reports']}/losses.csv"),
        upstream=tuple(e.name for e in evals),
    ))
    if upsampling:
        stages += _upsampling(cfg, evals)
    if ablations and pc.ablations:
        abl_evals = []
        for a in pc.ablations:
            stages.append(_train(cfg, a, ablation=True))
            pair = _sample_eval(cfg, a, cfg.sample.sampler, 0.0, ablation=True)
            stages += pair
            abl_evals.append(pair[1])
        stages.append(Stage(
            "ablation-report", "ablation-report", cmd="gdm report --ablations --quiet",
            deps=(eval_dir(cfg, True),), params=("pipeline.ablations", "pipeline.baseline"),
            metrics=(f"{p['reports']}/ablation_metrics.json",),
            plots=(f"{p['reports']}/ablation.json", f"{p['reports']}/ablation.png", f"{p['reports']}/ablation_losses.png"),
            upstream=tuple(e.name for e in abl_evals),
        ))
    return stages


# ------------------------------------------------------------------------------- resources
@dataclass(frozen=True)
class Resources:
    """What one stage occupies while it runs: CPU threads (torch.set_num_threads) and GPUs."""

    threads: int = 1
    gpus: int = 0
    priority: int = 9  # among stages waiting for a slot, the lowest number goes first (STAGE_PRIORITY)


# Stage kinds whose work is tensor math (they get `stage_threads` threads and, on CUDA, a GPU), and the
# config section whose `device` decides where they run. The rest (prepare, evaluate, reports) are light.
HEAVY_KINDS: dict[str, str | None] = {"train": "train", "train-classifier": "classifier_train", "sample": "sample",
                                      "train-upsampler": "upsampler_train", "sample-up": "sample",
                                      "train-evaluator": None}  # the evaluator CNN has no device key: CPU


# Which waiting stage takes a freed slot first: the longest work first (the UNet trainings are the
# critical path: every sample lane of a model waits for its training), the short trainings next, then
# the sampling lanes. Measured on the 2-core demo: in arrival order the third UNet training started
# after ~210 s and its 12 sample stages ran alone at the end.
STAGE_PRIORITY = {"train": 0, "train-upsampler": 0, "train-classifier": 1, "train-evaluator": 2, "sample": 3,
                  "sample-up": 3}


def host_cpus(cfg: Config) -> int:
    import os

    return cfg.pipeline.cpus or os.cpu_count() or 1


def host_gpus(cfg: Config) -> int:
    if cfg.pipeline.gpus is not None:
        return cfg.pipeline.gpus
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def stage_threads(cfg: Config) -> int:
    return cfg.pipeline.stage_threads or max(1, host_cpus(cfg) // 2)


def _on_gpu(cfg: Config, section: str) -> bool:
    device = getattr(cfg, section).device
    return device.startswith("cuda") or (device == "auto" and host_gpus(cfg) > 0)


def stage_resources(cfg: Config, stage: Stage) -> Resources:
    """The one declaration of what each stage needs; the flows' runners honour it (threads: Prefect
    global concurrency limits `gdm-cpu`/`gdm-gpu`; dask: worker resources CPU/GPU)."""
    priority = STAGE_PRIORITY.get(stage.kind, 9)
    if stage.kind not in HEAVY_KINDS:
        return Resources(threads=1, priority=priority)
    section = HEAVY_KINDS[stage.kind]
    threads = min(stage_threads(cfg), host_cpus(cfg))
    return Resources(threads=threads, gpus=1 if section and _on_gpu(cfg, section) else 0, priority=priority)


def dependants(stages: list[Stage], names: set[str]) -> set[str]:
    """Every stage downstream of `names` (what cannot run when they failed)."""
    out: set[str] = set()
    changed = True
    while changed:
        changed = False
        for s in stages:
            if s.name not in out and (set(s.upstream) & (names | out)):
                out.add(s.name)
                changed = True
    return out


def _param_slice(cfg: Config, key: str) -> object:
    node: object = cfg.to_dict()
    for part in key.split("."):
        node = node[part]  # type: ignore[index]
    return node


def _hash_path(h, path: Path) -> None:
    if path.is_file():
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    elif path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            h.update(str(f.relative_to(path)).encode())
            _hash_path(h, f)
    else:
        h.update(b"<missing>")


def input_hash(cfg: Config, stage: Stage) -> str:
    """Content hash of what determines a stage's outputs: its command, params and dependencies."""
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(stage.cmd.encode())
    h.update(json.dumps({k: _param_slice(cfg, k) for k in stage.params}, sort_keys=True).encode())
    for dep in stage.deps:
        _hash_path(h, Path(dep))
    return h.hexdigest()


def path_exists(path: str) -> bool:
    """A local path or an s3:// location (data.out_dir may be on S3) exists."""
    from gdm.data.storage import is_s3, location

    return location(path).exists() if is_s3(path) else Path(path).exists()


def outputs_exist(stage: Stage) -> bool:
    return all(path_exists(p) for p in stage.outs + stage.metrics)
