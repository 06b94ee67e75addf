"""All sample-quality metrics from extracted features (ADM section 5).

`sample_feats`: dict with `pool` (N x d, FID / precision-recall / KID), optional `spatial` (sFID),
optional `logits` (classifier logits: IS and class accuracy) or `logits_unbiased` (Inception's
1008-way logits: IS only; its class ids are not dataset label ids, so no accuracy).
`reference`: features ({pool[, spatial]}) or precomputed statistics ({mu, sigma[, mu_s, sigma_s]});
precision, recall and KID need reference features and are None with statistics only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gdm.errors import GdmError
from gdm.metrics.fid import feature_statistics, frechet_distance
from gdm.metrics.inception_score import inception_score
from gdm.metrics.kid import kid
from gdm.metrics.precision_recall import precision_recall


def _stats(feats: dict, feat_key: str, mu_key: str, sigma_key: str):
    if mu_key in feats and sigma_key in feats:
        return feats[mu_key], feats[sigma_key]
    if feats.get(feat_key) is not None:
        return feature_statistics(feats[feat_key])
    return None


def _rank_warnings(n: int, feats: np.ndarray | None, who: str, metric: str) -> list[str]:
    if feats is None:
        return []
    d = np.asarray(feats).shape[1]
    if n < d:
        msg = f"{who} N={n} < feature dim {d}: {metric} is rank-deficient and biased; "
        return [msg + "compare only at equal N"]
    return []


def class_accuracy(logits: np.ndarray, requested_labels: np.ndarray) -> float:
    """Fraction of samples whose argmax(logits) equals the label they were generated for."""
    logits, labels = np.asarray(logits), np.asarray(requested_labels)
    if labels.shape != (logits.shape[0],):
        raise GdmError(
            f"class_accuracy: requested_labels shape {labels.shape} does not match "
            f"{logits.shape[0]} samples"
        )
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def compute_metrics(
    sample_feats: dict,
    reference: dict,
    *,
    requested_labels=None,
    k: int = 3,
    is_split_size: int = 5000,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    generator: np.random.Generator | None = None,
) -> dict[str, Any]:
    """fid, sfid, is_mean/is_std, precision, recall, kid_mean/kid_std, accuracy, counts, warnings.

    `generator` drives KID's subset draws (default: np.random.default_rng(0)).
    """
    if sample_feats.get("pool") is None:
        raise GdmError("compute_metrics: sample features need a 'pool' array (N x d)")
    s_pool = np.asarray(sample_feats["pool"])
    r_pool = reference.get("pool")
    n_s = int(s_pool.shape[0])
    n_r = int(np.asarray(r_pool).shape[0]) if r_pool is not None else None
    warnings: list[str] = []
    out: dict[str, Any] = {
        "fid": None,
        "sfid": None,
        "is_mean": None,
        "is_std": None,
        "precision": None,
        "recall": None,
        "kid_mean": None,
        "kid_std": None,
        "accuracy": None,
        "num_samples": n_s,
        "num_reference": n_r,
    }

    # FID / sFID: Frechet distance of Gaussians fitted to pool_3 / spatial features.
    ref_stats = _stats(reference, "pool", "mu", "sigma")
    if ref_stats is None:
        raise GdmError(
            "compute_metrics: reference needs 'pool' features or 'mu'/'sigma' statistics"
        )
    out["fid"] = frechet_distance(*feature_statistics(s_pool), *ref_stats)
    warnings += _rank_warnings(n_s, s_pool, "samples", "FID")
    if n_r is not None:
        warnings += _rank_warnings(n_r, r_pool, "reference", "FID")
    ref_s = _stats(reference, "spatial", "mu_s", "sigma_s")
    if sample_feats.get("spatial") is not None and ref_s is not None:
        out["sfid"] = frechet_distance(*feature_statistics(sample_feats["spatial"]), *ref_s)

    # Inception Score over consecutive splits.
    logits = sample_feats.get("logits")
    is_logits = logits if logits is not None else sample_feats.get("logits_unbiased")
    if is_logits is not None:
        out["is_mean"], out["is_std"] = inception_score(is_logits, is_split_size, kind="logits")
        if n_s < is_split_size:
            warnings.append(
                f"IS computed on one split of N={n_s} < {is_split_size} (the paper "
                f"averages splits of {is_split_size}); compare only at equal N"
            )

    # Precision / recall and KID need reference features.
    if r_pool is None:
        warnings.append("reference has statistics only: precision, recall and KID not computed")
    else:
        out["precision"], out["recall"] = precision_recall(s_pool, r_pool, k)
        m = min(kid_subset_size, n_s, n_r)
        if m < kid_subset_size:
            warnings.append(
                f"KID subset size lowered from {kid_subset_size} to {m} (N_samples="
                f"{n_s}, N_reference={n_r})"
            )
        if m >= 2:
            gen = generator if generator is not None else np.random.default_rng(0)
            out["kid_mean"], out["kid_std"] = kid(
                s_pool, r_pool, subset_size=m, num_subsets=kid_subsets, generator=gen
            )

    if requested_labels is not None:
        if logits is None:
            raise GdmError(
                "compute_metrics: requested_labels given but sample features have no "
                "'logits' from a classifier whose class ids are the dataset labels"
            )
        out["accuracy"] = class_accuracy(logits, requested_labels)
    out["warnings"] = warnings
    return out
