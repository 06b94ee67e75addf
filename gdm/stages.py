"""One function per pipeline stage: typed config + paths in, paths/metrics out.

The CLI, `dvc.yaml` (through the CLI) and the Prefect flows all call these functions, so there is
one code path whatever runs the pipeline. Every stage writes the resolved config beside what it
produces (`config.yaml`). Directory layout (under `pipeline.runs_dir`):

    <variant>/unet/            model.pt, checkpoints/, metrics.csv|json, config.yaml
    classifier/                classifier.pt, checkpoints/, metrics.csv|json, config.yaml
    evaluator/                 evaluator.pt, metrics.json, config.yaml
    <variant>/samples/         <sampler>-<respacing>-scale<s>.npz|.png|.json
    <variant>/eval/            <sampler>-<respacing>-scale<s>.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from gdm.config import Config
from gdm.io import write_bytes
from gdm.progress import progress_bar

OnLog = Callable[[int, dict[str, Any]], None]


def write_config(cfg: Config, directory: Path) -> Path:
    path = Path(directory) / "config.yaml"
    write_bytes(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    return path


def variant_config(cfg: Config, name: str) -> Config:
    return cfg.variant(name)


def dataset_dir(cfg: Config) -> Path:
    return cfg.data.prepared_dir


def runs(cfg: Config) -> Path:
    return Path(cfg.pipeline.runs_dir)


def unet_dir(cfg: Config, variant: str) -> Path:
    return runs(cfg) / variant / "unet"


def prepare(cfg: Config, progress: bool = True) -> Path:
    """Stage `prepare`: dataset source -> data/prepared/<dataset>/ (shards, manifest, grid)."""
    from gdm.data.prepare import prepare_dataset
    from gdm.data.sources import open_source

    total = open_source(cfg.data.source, cfg.data.path, cfg.data.labels).count
    with progress_bar(f"prepare {cfg.data.dataset_name}", total, enabled=progress) as bar:
        return prepare_dataset(cfg.data, progress=bar)


def train(cfg: Config, variant: str, *, out: Path | None = None, resume: bool = True, progress: bool = True,
          on_log: OnLog | None = None) -> dict[str, Any]:
    """Stage `train@<variant>`: the diffusion UNet of one variant."""
    from gdm.train.diffusion import train_diffusion

    vcfg = variant_config(cfg, variant)
    out = Path(out) if out else unet_dir(cfg, variant)
    write_config(vcfg, out)
    with progress_bar(f"train {variant}", vcfg.train.steps, enabled=progress) as bar:
        return train_diffusion(vcfg, dataset_dir(cfg), out, resume=resume, progress=bar, on_log=on_log)


def train_classifier(cfg: Config, *, out: Path | None = None, resume: bool = True, progress: bool = True,
                     on_log: OnLog | None = None) -> dict[str, Any]:
    """Stage `train-classifier`: the noisy classifier used for guidance."""
    from gdm.train.classifier import train_classifier as run

    out = Path(out) if out else runs(cfg) / "classifier"
    write_config(cfg, out)
    with progress_bar("train-classifier", cfg.classifier_train.steps, enabled=progress) as bar:
        return run(cfg, dataset_dir(cfg), out, resume=resume, progress=bar, on_log=on_log)


def classifier_path(cfg: Config) -> Path:
    from gdm.train.classifier import MODEL_FILE

    return runs(cfg) / "classifier" / MODEL_FILE


def unet_path(cfg: Config, variant: str) -> Path:
    from gdm.train.diffusion import MODEL_FILE

    return unet_dir(cfg, variant) / MODEL_FILE


def sample(cfg: Config, variant: str, scale: float, *, unet: Path | None = None, classifier: Path | None = None,
           out: Path | None = None, progress: bool = True):
    """Stage `sample@<variant>-<scale>`: samples of one variant at one guidance scale."""
    from gdm.sampling import sample as run

    unet = Path(unet) if unet else unet_path(cfg, variant)
    if classifier is None and scale > 0:
        classifier = classifier_path(cfg)
    out = Path(out) if out else runs(cfg) / variant / "samples"
    with progress_bar(f"sample {variant} scale {scale:g}", cfg.sample.num_samples, enabled=progress) as bar:
        result = run(unet, out, cfg.sample, scale, classifier_path=classifier, progress=bar)
    write_config(cfg, out)
    return result


def evaluator_path(cfg: Config) -> Path:
    from gdm.evaluation import EVALUATOR_FILE

    return runs(cfg) / "evaluator" / EVALUATOR_FILE


def train_evaluator(cfg: Config, *, out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Stage `train-evaluator`: the independent clean classifier that scores samples."""
    from gdm.evaluation import train_evaluator_model

    out = Path(out) if out else runs(cfg) / "evaluator"
    write_config(cfg, out)
    with progress_bar("train-evaluator", cfg.evaluator.steps, enabled=progress) as bar:
        return train_evaluator_model(cfg, dataset_dir(cfg), out, progress=bar)


def evaluate(cfg: Config, samples: Path, *, reference: Path | None = None, out: Path | None = None,
             evaluator: Path | None = None, require_accuracy: bool = False) -> dict[str, Any]:
    """Stage `evaluate`: FID, sFID, IS, precision/recall, KID, accuracy of one sample file."""
    from gdm.evaluation import evaluate_file
    from gdm.io import write_json

    reference = Path(reference) if reference else dataset_dir(cfg)
    evaluator = evaluator or (evaluator_path(cfg) if cfg.eval.features == "evaluator" else None)
    metrics = evaluate_file(cfg, samples, reference, evaluator=evaluator, require_accuracy=require_accuracy)
    if out is not None:
        write_json(out, {**metrics, "config": cfg.to_dict()})
    return metrics
