"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets.

For each of `num_subsets` subsets we draw, in this order, `subset_size` sample rows and then
`subset_size` reference rows without replacement (`generator.choice(n, m, replace=False)`), and
compute the unbiased estimator (the operations of torch-fidelity's `mmd2`, mmd_est="unbiased", so the
same result to the bit, tested; numpy only):

    MMD^2 = sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 sum_{i,j} k(x_i,y_j)/m^2
"""

from __future__ import annotations

import numpy as np

from gdm.errors import GdmError


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for all row pairs."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """The module docstring's MMD^2 from the three m x m kernel matrices (diagonals of k_xx, k_yy dropped)."""
    m = k_xx.shape[0]
    kt_xx_sum = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
    kt_yy_sum = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
    k_xy_sum = k_xy.sum(axis=0).sum()
    return float((kt_xx_sum + kt_yy_sum) / (m * (m - 1)) - 2 * k_xy_sum / (m * m))


def kid(
    sample_features: np.ndarray,
    reference_features: np.ndarray,
    *,
    subset_size: int = 1000,
    num_subsets: int = 100,
    generator: np.random.Generator,
) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over `num_subsets` random subsets."""
    x_all = np.asarray(sample_features, dtype=np.float64)
    y_all = np.asarray(reference_features, dtype=np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise GdmError(f"kid: need N x d arrays of equal d, got {x_all.shape} and {y_all.shape}")
    n_x, n_y = x_all.shape[0], y_all.shape[0]
    if not 2 <= subset_size <= min(n_x, n_y):
        raise GdmError(
            f"kid: subset_size={subset_size} must be in [2, min(N_samples={n_x}, N_ref={n_y})]"
        )
    if num_subsets < 1:
        raise GdmError(f"kid: num_subsets must be >= 1, got {num_subsets}")
    mmds = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        x = x_all[generator.choice(n_x, subset_size, replace=False)]
        y = y_all[generator.choice(n_y, subset_size, replace=False)]
        k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
        mmds[i] = mmd2_unbiased(k_xx, k_xy, k_yy)
    return float(mmds.mean()), float(mmds.std())
