"""ADM sample / reference batch files (`.npz`).

Layout (as the ADM evaluator reads them): `arr_0` uint8 images N x H x W x C (C = 1 or 3),
optional `arr_1` integer labels (N,). Reference batches may also carry precomputed Inception
statistics `mu`, `sigma` (pool_3, 2048-d) and `mu_s`, `sigma_s` (spatial, 2023-d).
Files are read with allow_pickle=False and written atomically.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from gdm.errors import DataError
from gdm.io import atomic_path

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def _open(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: npz file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


def _check_images(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{where}: expected uint8 images N x H x W x C with C in {{1, 3}} (NHWC), "
            f"got shape {images.shape} dtype {images.dtype}"
        )
    return images


def _check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{where}: expected integer labels of shape ({n},), "
            f"got shape {labels.shape} dtype {labels.dtype}"
        )
    return labels.astype(np.int64)


def read_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 NHWC, labels int64 or None) from an ADM `.npz` (arr_0, optional arr_1)."""
    path = Path(path)
    with _open(path) as z:
        if "arr_0" not in z.files:
            raise DataError(f"{path}: no 'arr_0' (images) array; arrays present: {z.files}")
        images = _check_images(z["arr_0"], f"{path} arr_0")
        labels = None
        if "arr_1" in z.files:
            labels = _check_labels(z["arr_1"], images.shape[0], f"{path} arr_1")
    return images, labels


def write_samples(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Atomically write `arr_0` = images (uint8 NHWC), `arr_1` = labels, plus `extra` arrays."""
    images = _check_images(np.asarray(images), f"write_samples({path}) images")
    arrays: dict[str, np.ndarray] = {"arr_0": images}
    if labels is not None:
        arrays["arr_1"] = _check_labels(np.asarray(labels), images.shape[0], f"{path} labels")
    for key, value in (extra or {}).items():
        if key in arrays:
            raise DataError(f"write_samples({path}): extra key {key!r} clashes with arr_0/arr_1")
        arrays[key] = np.asarray(value)
        if arrays[key].dtype == object:
            raise DataError(f"write_samples({path}): extra[{key!r}] is an object array")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_reference_stats(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """Precomputed {mu, sigma[, mu_s, sigma_s]} (float64) from a reference batch, or None."""
    path = Path(path)
    with _open(path) as z:
        if "mu" not in z.files and "sigma" not in z.files:
            return None
        stats = {}
        for mean_key, cov_key in (("mu", "sigma"), ("mu_s", "sigma_s")):
            if mean_key not in z.files and cov_key not in z.files:
                continue
            if mean_key not in z.files or cov_key not in z.files:
                raise DataError(f"{path}: has only one of {mean_key!r}/{cov_key!r}; need both")
            mu, sigma = z[mean_key].astype(np.float64), z[cov_key].astype(np.float64)
            d = mu.shape[0] if mu.ndim == 1 else -1
            if mu.ndim != 1 or sigma.shape != (d, d):
                raise DataError(
                    f"{path}: {mean_key} must be (d,) and {cov_key} (d, d); "
                    f"got {mu.shape} and {sigma.shape}"
                )
            stats[mean_key], stats[cov_key] = mu, sigma
    return stats


def write_reference_batch(
    path: str | os.PathLike,
    images: np.ndarray,
    stats: dict[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> None:
    """Atomically write a reference batch: arr_0 images, optional arr_1 labels and statistics."""
    stats = dict(stats or {})
    unknown = sorted(set(stats) - set(STAT_KEYS))
    if unknown:
        raise DataError(f"write_reference_batch({path}): unknown stats keys {unknown}")
    write_samples(path, images, labels, {k: np.asarray(v, np.float64) for k, v in stats.items()})
