"""Improved precision and recall (Kynkaanniemi et al. 2019) as the ADM evaluator computes them.

Each point's k-NN ball (k = 3) has radius = squared Euclidean distance to its k-th nearest
neighbour in its own set, excluding the point itself (a duplicate point counts as a neighbour).

    precision = fraction of samples that lie in ANY reference ball    (d^2(s, r) <= radius_r)
    recall    = fraction of references that lie in ANY sample ball    (d^2(r, s) <= radius_s)

Distances are squared, float64, formed block by block as |a|^2 - 2 a.b + |b|^2 (clamped at 0), so
50k x 2048 features never need an N x N matrix: peak extra memory is one block of
`max_block_bytes` plus the two feature sets in float64.
"""

from __future__ import annotations

import numpy as np

from gdm.errors import GdmError

DEFAULT_BLOCK_BYTES = 1 << 28  # 256 MiB per float64 distance block


def _sq_dists(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    d = a @ b.T  # one block; the rest is done in place
    d *= -2.0
    d += a_sq[:, None]
    d += b_sq[None, :]
    return np.maximum(d, 0.0, out=d)


def _row_chunks(n_rows: int, n_cols: int, max_block_bytes: int):
    step = max(1, int(max_block_bytes // (8 * max(n_cols, 1))))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise GdmError(f"precision/recall: {name} must be an N x d array, got shape {x.shape}")
    return x


def knn_radii(
    features: np.ndarray, k: int = 3, *, max_block_bytes: int = DEFAULT_BLOCK_BYTES
) -> np.ndarray:
    """Squared distance from each point to its k-th nearest neighbour in the same set (self excluded)."""
    x = _as_features(features, "features")
    n = x.shape[0]
    if not 1 <= k < n:
        raise GdmError(f"knn_radii: need 1 <= k < N, got k={k} with N={n} points")
    x_sq = np.einsum("ij,ij->i", x, x)
    radii = np.empty(n, dtype=np.float64)
    for i0, i1 in _row_chunks(n, n, max_block_bytes):
        d = _sq_dists(x[i0:i1], x_sq[i0:i1], x, x_sq)
        rows = np.arange(i1 - i0)
        d[rows, i0 + rows] = np.inf  # exclude the point itself
        radii[i0:i1] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return radii


def precision_recall(
    sample_features: np.ndarray,
    reference_features: np.ndarray,
    k: int = 3,
    *,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[float, float]:
    """(precision, recall) of samples against references, k-NN manifolds with membership `<=`."""
    s = _as_features(sample_features, "sample_features")
    r = _as_features(reference_features, "reference_features")
    if s.shape[1] != r.shape[1]:
        raise GdmError(
            f"precision/recall: feature dims differ: samples {s.shape}, references {r.shape}"
        )
    radii_s = knn_radii(s, k, max_block_bytes=max_block_bytes)
    radii_r = knn_radii(r, k, max_block_bytes=max_block_bytes)
    s_sq, r_sq = np.einsum("ij,ij->i", s, s), np.einsum("ij,ij->i", r, r)
    sample_in_ref = np.zeros(s.shape[0], dtype=bool)
    ref_in_sample = np.zeros(r.shape[0], dtype=bool)
    for i0, i1 in _row_chunks(s.shape[0], r.shape[0], max_block_bytes):
        d = _sq_dists(s[i0:i1], s_sq[i0:i1], r, r_sq)  # rows: samples, columns: references
        sample_in_ref[i0:i1] = np.any(d <= radii_r[None, :], axis=1)
        ref_in_sample |= np.any(d <= radii_s[i0:i1, None], axis=0)
    return float(sample_in_ref.mean()), float(ref_in_sample.mean())
