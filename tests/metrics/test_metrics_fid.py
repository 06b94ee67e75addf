import numpy as np
import pytest
import scipy.linalg

import gdm.metrics.fid as fid_mod
from gdm.errors import GdmError
from gdm.metrics import feature_statistics, frechet_distance


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or 2 * d))
    return a @ a.T / a.shape[1]


def _reference_fid(mu1, s1, mu2, s2):
    """The reference evaluator's formula: scipy sqrtm of S1 S2, real part."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(16), _random_cov(rng, 16)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)


def test_equal_covariances_give_squared_mean_difference():
    rng = np.random.default_rng(1)
    mu1, mu2, s = rng.standard_normal(8), rng.standard_normal(8), _random_cov(rng, 8)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 0.0, 2.0), (1.5, 0.3, -2.0, 4.0), (3, 2, 3, 2)])
def test_one_dimensional_closed_form(m1, s1, m2, s2):
    got = frechet_distance([m1], [[s1**2]], [m2], [[s2**2]])
    assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, abs=1e-12)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(2)
    sd1, sd2 = rng.uniform(0.1, 3, 32), rng.uniform(0.1, 3, 32)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2)
    got = frechet_distance(mu1, np.diag(sd1**2), mu2, np.diag(sd2**2))
    assert got == pytest.approx(want, rel=1e-9)


def test_matches_scipy_sqrtm_reference_on_full_rank():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    s1, s2 = _random_cov(rng, 64), _random_cov(rng, 64)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        _reference_fid(mu1, s1, mu2, s2), rel=1e-8
    )


def test_rank_deficient_covariances_do_not_give_nan():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.5
    value = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert np.isfinite(value) and value > 0
    mu, sigma = feature_statistics(a)
    same = frechet_distance(mu, sigma, mu, sigma)
    # sqrt of round-off-sized eigenvalues leaves ~sqrt(eps) * scale, as scipy's sqrtm does.
    assert np.isfinite(same) and abs(same) < 1e-6 * np.trace(sigma)
    assert same == pytest.approx(_reference_fid(mu, sigma, mu, sigma), abs=1e-9)


def test_non_finite_result_retries_with_diagonal_offset(monkeypatch):
    calls = []
    real = fid_mod._fid_eigvals

    def flaky(mu1, s1, mu2, s2):
        calls.append(s1.copy())
        return float("nan") if len(calls) == 1 else real(mu1, s1, mu2, s2)

    monkeypatch.setattr(fid_mod, "_fid_eigvals", flaky)
    s = np.diag([1.0, 2.0])
    assert np.isfinite(frechet_distance([0, 0], s, [0, 0], s))
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1] - calls[0], np.eye(2) * fid_mod.FID_OFFSET_EPS)


def test_feature_statistics_float64_unbiased():
    x = np.arange(12, dtype=np.float32).reshape(4, 3) ** 1.5
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False, ddof=1))
    with pytest.raises(GdmError, match="N x d"):
        feature_statistics(np.zeros(5))


def test_bad_inputs_raise():
    with pytest.raises(GdmError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(GdmError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))


def test_equals_torch_fidelity_to_the_bit():
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    rng = np.random.default_rng(3)
    for n, d in ((50, 8), (20, 32)):  # full rank, and rank-deficient (N < d: round-off negative eigenvalues)
        mu1, s1 = feature_statistics(rng.standard_normal((n, d)))
        mu2, s2 = feature_statistics(rng.standard_normal((n, d)) * 1.5 + 0.2)
        ours = frechet_distance(mu1, s1, mu2, s2)
        theirs = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)[KEY_METRIC_FID]
        assert ours == theirs
