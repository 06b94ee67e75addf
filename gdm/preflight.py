"""Checks a stage runs before it writes anything or starts expensive work.

Every input of a command is looked at first (all checkpoint paths, the dataset, the output
target, the device, the tracking store), so a refusal costs seconds and leaves no file behind:
output directories are created only after these pass. The trainers run their own remaining checks
(resume state, data decoding) before their `on_start` hook writes the run's first file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gdm.config import Config, TrackingConfig
from gdm.errors import CheckpointError, ConfigError, DataError
from gdm.io import check_dir_target, check_file_target


def tracking(tc: TrackingConfig) -> None:
    """A tracking store that is not MLflow's is refused (its owner's data is never touched)."""
    if tc.enabled:
        from gdm.tracking.store import check_store

        check_store(tc.tracking_uri)


def dataset(dataset_dir: Path, *, num_classes: int | None = None, needs_labels: bool = False, key: str = ""):
    from gdm.data.dataset import read_manifest

    m = read_manifest(dataset_dir)
    if needs_labels and m.num_classes < 2:
        raise ConfigError(f"{key}: dataset {m.path} is unconditional (no class labels to learn)")
    if num_classes is not None and num_classes != m.num_classes:
        raise ConfigError(f"{key} is {num_classes} but the prepared dataset {m.path} has {m.num_classes} classes "
                          f"(set {key}: {m.num_classes or 'null'})")
    return m


def train(cfg: Config, dataset_dir: Path, out: Path, net: str = "unet", train_section: str = "train") -> None:
    """`gdm train` (net unet, train) and `gdm train-upsampler` (upsampler, upsampler_train)."""
    from gdm.models import resolve_device

    check_dir_target(out, "--out")
    dataset(dataset_dir, num_classes=getattr(cfg, net).num_classes, key=f"{net}.num_classes")
    resolve_device(getattr(cfg, train_section).device, f"{train_section}.device")
    tracking(cfg.tracking)


def train_classifier(cfg: Config, dataset_dir: Path, out: Path) -> None:
    from gdm.models import resolve_device

    check_dir_target(out, "--out")
    dataset(dataset_dir, needs_labels=True, key="train-classifier")
    resolve_device(cfg.classifier_train.device, "classifier_train.device")
    tracking(cfg.tracking)


def train_evaluator(cfg: Config, dataset_dir: Path, out: Path) -> None:
    check_dir_target(out, "--out")
    dataset(dataset_dir, needs_labels=True, key="train-evaluator")
    tracking(cfg.tracking)


def sample(cfg: Config, scales: Sequence[float], unet: Path, classifier: Path | None, outs: Sequence[Path],
           upsampler: Path | None = None) -> None:
    """All inputs of a sampling command (every scale): the UNet, the classifier when any scale is
    classifier-guided, the UNet's null label for classifier-free guidance, the upsampler of a two-stage
    run (and that it fits the base model), the labels rule, the device and the output targets, loaded
    and checked before the first sample."""
    from gdm.models import load_model, resolve_device
    from gdm.sampling import check_free_guidance, check_same_schedule, requested_labels

    for out in outs:
        check_dir_target(out, "--out")
    resolve_device(cfg.sample.device, "sample.device")
    _exists(unet, "--unet", "UNet checkpoint", "gdm train" + (" --low-res" if upsampler is not None else ""))
    free = cfg.sample.guidance == "free"
    guided = any(s > 0 for s in scales) and not free
    if guided:
        if classifier is None:
            raise ConfigError(f"guidance scales {[s for s in scales if s > 0]} need a classifier (--classifier)")
        _exists(classifier, "--classifier", "classifier checkpoint", "gdm train-classifier")
    if upsampler is not None:
        _exists(upsampler, "--upsample", "upsampler checkpoint", "gdm train-upsampler")
    model, ckpt = load_model(unet, use_ema=cfg.sample.use_ema, kind="unet")
    if "diffusion" not in ckpt.get("config", {}) or "num_classes" not in ckpt.get("data", {}):
        raise CheckpointError(f"{unet}: the checkpoint does not record its diffusion schedule and data "
                              "(config.diffusion, data.num_classes); it cannot be sampled")
    if free:
        check_free_guidance(model, unet)
    num_classes = int(ckpt["data"]["num_classes"])
    requested_labels(cfg.sample.labels, _first(cfg.sample.num_samples), num_classes, cfg.sample.seed)
    if guided:
        if num_classes == 0:
            raise DataError(f"{unet}: an unconditional model on unlabelled data cannot be classifier-guided "
                            "(guidance needs class labels); sample scale 0 only")
        _, cck = load_model(classifier, kind="classifier")
        check_same_schedule(ckpt["config"], cck["diffusion"], unet, classifier)
    if upsampler is not None:
        from gdm.upsampling import check_pair

        up, _ = load_model(upsampler, use_ema=cfg.sample.use_ema, kind="superres")  # readable, finite weights
        check_pair(unet, upsampler)
        if up.num_classes is not None and num_classes == 0:
            raise ConfigError(f"--upsample {upsampler}: the upsampler is class-conditional but the base model {unet} "
                              "samples without labels (an unconditional dataset)")
    tracking(cfg.tracking)


def evaluate(cfg: Config, samples: Path, out: Path | None, evaluator: Path | None) -> None:
    from gdm.evaluation import sample_file

    if out is not None:
        from gdm.stages import info_path

        check_file_target(out, "--out")
        info = info_path(Path(out))
        check_file_target(info, "--out (its info file)")
        check_file_target(info.with_suffix(".config.yaml"), "--out (its config file)")
    sample_file(samples)
    if cfg.eval.features == "evaluator" and evaluator is not None:
        _exists(evaluator, "--evaluator", "evaluator checkpoint", "gdm train-evaluator")
    tracking(cfg.tracking)


def _first(n: int):
    import numpy as np

    return np.arange(min(n, 1))


def _exists(path: Path, option: str, what: str, how: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"{option} {p}: is a directory, expected a {what} file")
    if not p.is_file():
        raise CheckpointError(f"{option} {p}: {what} not found (run `{how}` first, or check the path)")
