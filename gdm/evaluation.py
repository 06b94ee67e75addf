"""Scoring samples: feature extractors, cached reference features, and the metrics of a sample file.

Extractors (`eval.features`):
- `evaluator`: an independent clean classifier trained by `gdm train-evaluator` (never the guidance
  classifier): penultimate pre-activation features for FID/precision/recall/KID, an intermediate map
  for the sFID analogue, logits for IS and the accuracy of samples on their requested labels;
- `inception`: torch-fidelity's Inception-V3 (TF-exact resize) from a local weights file or the
  torch hub cache, never downloaded: pool_3, unbiased logits (IS) and Mixed_6d spatial features.
Reference features are cached per (dataset content hash, split, extractor, extractor weights hash).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdm.config import Config
from gdm.data.dataset import load_split_uint8, read_manifest
from gdm.data.reader import RowReader
from gdm.data.storage import is_s3
from gdm.errors import DataError, GdmError
from gdm.io import sha256_file, write_json
from gdm.metrics import StatsCache, StatsKey, compute_metrics, read_reference_stats
from gdm.metrics.evaluator import (
    EvaluatorNet,
    extract_features,
    load_evaluator,
    save_evaluator,
    train_evaluator,
    uint8_to_float,
)
from gdm.metrics.npz import image_header, iter_images, read_labels
from gdm.progress import SILENT, Bar

EVALUATOR_FILE = "evaluator.pt"
FEATURE_CHUNK = 4096  # images decoded at a time for reference features (a multiple of usual batch sizes)
MIN_SAMPLES = 5  # precision/recall with k = 3 needs k + 1 points in each set


@dataclass
class Extractor:
    name: str
    weights_hash: str
    features: Callable[[np.ndarray], dict[str, np.ndarray]]  # uint8 NHWC -> {pool, spatial, logits...}
    image_shape: tuple[int, int, int] | None  # (H, W, C) it expects, None = any
    gives_labels: bool  # logits are dataset class ids (accuracy possible)
    batch_size: int = 1  # images per forward pass (streamed chunks are a multiple of it: same numerics)
    num_classes: int | None = None  # the class ids it knows (None: not dataset classes)

    def chunk(self, target: int = FEATURE_CHUNK) -> int:
        return self.batch_size * max(1, target // self.batch_size)


def train_evaluator_model(cfg: Config, dataset_dir: str | Path, out_dir: str | Path,
                          progress: Bar = SILENT) -> dict[str, Any]:
    """Train the clean evaluator classifier on the training split; report validation accuracy."""
    ec = cfg.evaluator
    m = read_manifest(dataset_dir)
    if m.num_classes < 2:
        raise GdmError(f"train-evaluator: dataset {m.path} has no class labels")
    train, val = RowReader(m, "train"), RowReader(m, "val")
    net = EvaluatorNet(image_size=m.resolution, in_channels=m.channels, num_classes=m.num_classes,
                       width=ec.width, feature_dim=ec.feature_dim, seed=ec.seed)
    metrics = train_evaluator(
        net, train, val,
        steps=ec.steps, batch_size=ec.batch_size, lr=ec.lr, generator=torch.Generator().manual_seed(ec.seed),
        progress=lambda step, total, loss: progress.advance(loss=loss),
    )
    metrics.update(dataset_hash=m.content_hash, train_images=len(train), val_images=len(val))
    out = Path(out_dir) / EVALUATOR_FILE
    save_evaluator(out, net, metrics)
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    write_json(Path(out_dir) / "metrics.json", numbers)  # numbers only: `dvc metrics show` reads it
    write_json(Path(out_dir) / "info.json", {k: v for k, v in metrics.items() if k not in numbers})
    return {"model": str(out), **metrics}


def evaluator_extractor(path: str | Path, batch_size: int) -> Extractor:
    path = Path(path)
    if not path.is_file():
        raise GdmError(f"evaluator checkpoint not found: {path} (run `gdm train-evaluator` first)")
    net, _ = load_evaluator(path)
    c = net.config
    return Extractor("evaluator", sha256_file(path),
                     lambda imgs: extract_features(net, uint8_to_float(imgs), batch_size),
                     (c["image_size"], c["image_size"], c["in_channels"]), True, batch_size,
                     int(c["num_classes"]))


def inception_extractor(weights: str | None, batch_size: int) -> Extractor:
    from gdm.metrics import load_inception

    inc = load_inception(weights)

    def feats(imgs: np.ndarray) -> dict[str, np.ndarray]:
        nchw = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2)
        return {k: np.asarray(v, dtype=np.float64) for k, v in inc.extract(nchw, batch_size).items()}

    return Extractor("inception", inc.weights_sha256, feats, None, False, batch_size)


def make_extractor(cfg: Config, evaluator_path: str | Path | None) -> Extractor:
    if cfg.eval.features == "inception":
        return inception_extractor(cfg.eval.inception_weights, cfg.eval.batch_size)
    path = evaluator_path or Path(cfg.pipeline.runs_dir) / "evaluator" / EVALUATOR_FILE
    return evaluator_extractor(path, cfg.eval.batch_size)


def _check_shape(images: np.ndarray, ex: Extractor, what: str) -> None:
    _check_hwc(tuple(images.shape[1:]), ex, what)


def _check_hwc(hwc: tuple[int, ...], ex: Extractor, what: str) -> None:
    if ex.image_shape is not None and tuple(hwc) != ex.image_shape:
        raise DataError(
            f"{what}: images are {tuple(hwc)} (H, W, C) but the {ex.name} extractor expects "
            f"{ex.image_shape}: samples and reference must have the same resolution and channels"
        )


def npz_features(ex: Extractor, path: Path) -> dict[str, np.ndarray]:
    """Features of an ADM .npz's images, read one forward batch (`ex.batch_size` rows) at a time:
    memory holds one batch of images (never all of them, nor a float copy of all) plus the
    features, and the features equal those of the whole array at once."""
    _check_hwc(image_header(path)[1], ex, str(path))
    parts = [ex.features(batch) for batch in iter_images(path, ex.batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def dataset_features(ex: Extractor, dataset_dir: str | Path, split: str, cache_dir: str | Path) -> dict:
    """Features of a prepared split, computed once per (content hash, split, extractor, weights)."""
    m = read_manifest(dataset_dir)
    cache = StatsCache(cache_dir)
    key = StatsKey(m.content_hash, split, ex.name, ex.weights_hash)
    hit = cache.get(key)
    if hit is not None:
        return hit
    expected = (m.resolution, m.resolution, m.channels)
    if ex.image_shape is not None and expected != ex.image_shape:
        _check_shape(np.zeros((0, *expected), np.uint8), ex, f"{dataset_dir} ({split})")
    parts: dict[str, list[np.ndarray]] = {}
    chunk = ex.chunk()
    for images, _ in RowReader(m, split, cache_rows=chunk).chunks_uint8(chunk):  # bounded memory
        for k, v in ex.features(images).items():
            parts.setdefault(k, []).append(v)
    feats = {k: np.concatenate(v) for k, v in parts.items()}
    cache.put(key, feats)
    return feats


def reference_features(ex: Extractor, reference: str | Path, split: str, cache_dir: str | Path) -> dict:
    """A prepared dataset directory, or an ADM reference batch `.npz` (with or without mu/sigma)."""
    ref = Path(reference)
    if is_s3(reference) or ref.is_dir():
        return dataset_features(ex, reference, split, cache_dir)
    if ref.suffix != ".npz" or not ref.is_file():
        raise DataError(f"reference {ref}: expected a prepared dataset directory or an ADM .npz reference batch")
    stats = read_reference_stats(ref) if ex.name == "inception" else None  # published stats are Inception's
    cache, key = StatsCache(cache_dir), StatsKey(sha256_file(ref), "reference-batch", ex.name, ex.weights_hash)
    feats = cache.get(key)
    if feats is None:
        feats = npz_features(ex, ref)
        cache.put(key, feats)
    # FID/sFID from the batch's statistics when it has them; precision/recall/KID need the features
    return {**feats, **stats} if stats is not None else feats


def sample_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise DataError(f"{path}: expected exactly one .npz sample file in the directory, found {len(found)}")
        return found[0]
    if not path.is_file():
        raise DataError(f"sample file not found: {path}")
    return path


def evaluate_file(cfg: Config, samples: str | Path, reference: str | Path, *, evaluator: str | Path | None = None,
                  split: str | None = None, require_accuracy: bool = False) -> dict[str, Any]:
    """All metrics of one ADM sample file (or a directory holding one) against a reference."""
    samples = sample_file(samples)
    n, hwc = image_header(samples)
    labels = read_labels(samples)
    if n < MIN_SAMPLES:
        raise DataError(f"{samples}: {n} samples; at least {MIN_SAMPLES} are needed for the metrics")
    ex = make_extractor(cfg, evaluator)
    _check_hwc(hwc, ex, str(samples))
    if labels is not None and ex.num_classes is not None:  # before any feature is computed or cached
        bad = np.flatnonzero((labels < -1) | (labels >= ex.num_classes))
        if len(bad):
            raise DataError(f"{samples}: arr_1 label {int(labels[bad[0]])} (index {int(bad[0])}; {len(bad)} such) is "
                            f"outside the {ex.name} extractor's classes [0, {ex.num_classes}) (-1: unlabelled); "
                            "samples and evaluator must come from the same dataset")
    split = split or cfg.eval.reference
    ref = reference_features(ex, reference, split, cfg.eval.cache_dir)
    feats = npz_features(ex, samples)
    has_labels = labels is not None and (labels >= 0).all()
    if require_accuracy and not (has_labels and ex.gives_labels):
        why = "it has no arr_1 labels" if not has_labels else f"the {ex.name} extractor has no dataset classes"
        raise DataError(f"{samples}: class accuracy was asked for but {why}")
    metrics = compute_metrics(
        feats, ref, requested_labels=labels if has_labels and ex.gives_labels else None,
        kid_subset_size=cfg.eval.kid_subset_size, kid_subsets=cfg.eval.kid_subsets,
    )
    metrics["is"] = metrics["is_mean"]
    metrics.update(features=ex.name, extractor_sha256=ex.weights_hash, samples=str(samples),
                   reference=str(reference), reference_split=split if is_s3(reference) or Path(reference).is_dir() else None)
    return metrics


def write_reference_batch(cfg: Config, dataset_dir: str | Path, out: str | Path, split: str,
                          evaluator: str | Path | None = None) -> Path:
    """Write a prepared split as an ADM reference batch (arr_0 images, arr_1 labels, mu/sigma/mu_s/sigma_s)."""
    from gdm.metrics import feature_statistics
    from gdm.metrics import write_reference_batch as write

    images, labels = load_split_uint8(dataset_dir, split)
    ex = make_extractor(cfg, evaluator)
    feats = dataset_features(ex, dataset_dir, split, cfg.eval.cache_dir)
    mu, sigma = feature_statistics(feats["pool"])
    stats = {"mu": mu, "sigma": sigma}
    if "spatial" in feats:
        stats["mu_s"], stats["sigma_s"] = feature_statistics(feats["spatial"])
    write(out, images, stats, labels=labels)
    return Path(out)
