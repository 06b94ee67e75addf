"""Evaluation metrics as the ADM paper computes them (section 5 of ADM.md).

Pure numpy metrics (FID, IS, precision/recall, KID), `.npz` sample files, a feature cache, the
offline Inception-V3 extractor (torch-fidelity backend, never downloads) and a small clean
evaluator CNN for small datasets.
"""

from gdm.metrics.cache import StatsCache, StatsKey, content_hash
from gdm.metrics.compute import class_accuracy, compute_metrics
from gdm.metrics.evaluator import (
    EvaluatorNet,
    extract_features,
    load_evaluator,
    random_translate,
    save_evaluator,
    train_evaluator,
    uint8_to_float,
)
from gdm.metrics.fid import feature_statistics, frechet_distance
from gdm.metrics.inception import (
    WEIGHTS_FILENAME,
    InceptionFeatures,
    find_inception_weights,
    load_inception,
    make_random_inception_weights,
)
from gdm.metrics.inception_score import inception_score
from gdm.metrics.kid import kid, polynomial_kernel
from gdm.metrics.npz import read_reference_stats, read_samples, write_reference_batch, write_samples
from gdm.metrics.precision_recall import knn_radii, precision_recall

__all__ = [
    "WEIGHTS_FILENAME",
    "EvaluatorNet",
    "InceptionFeatures",
    "StatsCache",
    "StatsKey",
    "class_accuracy",
    "compute_metrics",
    "content_hash",
    "extract_features",
    "feature_statistics",
    "find_inception_weights",
    "frechet_distance",
    "inception_score",
    "kid",
    "knn_radii",
    "load_evaluator",
    "load_inception",
    "make_random_inception_weights",
    "polynomial_kernel",
    "precision_recall",
    "random_translate",
    "read_reference_stats",
    "read_samples",
    "save_evaluator",
    "train_evaluator",
    "uint8_to_float",
    "write_reference_batch",
    "write_samples",
]
