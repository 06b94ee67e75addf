import numpy as np
import pytest

from gdm.errors import GdmError
from gdm.metrics import kid
from gdm.metrics.kid import mmd2_unbiased, polynomial_kernel


def _naive_mmd2(x, y):
    def k(a, b):
        return (np.dot(a, b) / len(a) + 1.0) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_matches_naive_double_loop_over_the_same_subsets():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((40, 5)) + 0.3
    mean, std = kid(x, y, subset_size=10, num_subsets=3, generator=np.random.default_rng(7))
    draws = np.random.default_rng(7)
    mmds = []
    for _ in range(3):
        xs = x[draws.choice(30, 10, replace=False)]
        ys = y[draws.choice(40, 10, replace=False)]
        mmds.append(_naive_mmd2(xs, ys))
    assert mean == pytest.approx(np.mean(mmds), rel=1e-10)
    assert std == pytest.approx(np.std(mmds), rel=1e-8)


def test_whole_set_subset_equals_naive_estimate():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((12, 4)), rng.standard_normal((12, 4)) * 2
    mean, std = kid(x, y, subset_size=12, num_subsets=2, generator=np.random.default_rng(0))
    assert mean == pytest.approx(_naive_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_same_distribution_near_zero_shifted_positive():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    same, _ = kid(x, y, subset_size=100, num_subsets=20, generator=np.random.default_rng(0))
    shifted, _ = kid(
        x, y + 1.0, subset_size=100, num_subsets=20, generator=np.random.default_rng(0)
    )
    assert abs(same) < 0.05 < shifted


def test_subset_larger_than_set_raises():
    with pytest.raises(GdmError, match="subset_size"):
        kid(np.zeros((5, 2)), np.zeros((9, 2)), subset_size=6, generator=np.random.default_rng(0))


def test_mmd2_equals_torch_fidelity_to_the_bit():
    from torch_fidelity.metric_kid import mmd2

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((15, 6)), rng.standard_normal((15, 6)) + 0.5
    k = polynomial_kernel
    assert mmd2_unbiased(k(x, x), k(x, y), k(y, y)) == mmd2(k(x, x), k(x, y), k(y, y), mmd_est="unbiased")
