import numpy as np
import pytest

from gdm.errors import GdmError
from gdm.metrics import (
    StatsCache,
    StatsKey,
    class_accuracy,
    compute_metrics,
    content_hash,
    feature_statistics,
)


def _feats(n, d=8, shift=0.0, seed=0, classes=4):
    rng = np.random.default_rng(seed)
    return {
        "pool": rng.standard_normal((n, d)) + shift,
        "spatial": rng.standard_normal((n, 3)) + shift,
        "logits": rng.standard_normal((n, classes)),
    }


def test_identical_sets():
    feats = _feats(60)
    out = compute_metrics(
        feats, {"pool": feats["pool"], "spatial": feats["spatial"]}, kid_subsets=5
    )
    assert abs(out["fid"]) < 1e-9 and abs(out["sfid"]) < 1e-9
    assert out["precision"] == 1.0 and out["recall"] == 1.0
    assert out["num_samples"] == 60 and out["num_reference"] == 60
    assert out["is_mean"] > 1.0 and out["is_std"] == 0.0
    assert out["accuracy"] is None
    assert any("KID subset size lowered from 1000 to 60" in w for w in out["warnings"])
    assert any("IS computed on one split of N=60" in w for w in out["warnings"])


def test_shifted_sets_and_stats_only_reference():
    samples, ref = _feats(80), _feats(100, shift=2.0, seed=1)
    full = compute_metrics(
        samples, ref, kid_subset_size=50, kid_subsets=4, generator=np.random.default_rng(0)
    )
    assert full["fid"] > 20 and full["kid_mean"] > 0 and full["precision"] < 0.5
    mu, sigma = feature_statistics(ref["pool"])
    mu_s, sigma_s = feature_statistics(ref["spatial"])
    stats_only = compute_metrics(
        samples, {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
    )
    assert stats_only["fid"] == pytest.approx(full["fid"], rel=1e-12)
    assert stats_only["sfid"] == pytest.approx(full["sfid"], rel=1e-12)
    assert stats_only["precision"] is None and stats_only["kid_mean"] is None
    assert stats_only["num_reference"] is None
    assert any("statistics only" in w for w in stats_only["warnings"])


def test_rank_deficient_warning():
    out = compute_metrics(_feats(20, d=64), _feats(100, d=64, seed=1), kid_subsets=2)
    assert np.isfinite(out["fid"])
    assert (
        "samples N=20 < feature dim 64: FID is rank-deficient and biased; compare only at equal N"
    ) in out["warnings"]


def test_accuracy_with_requested_labels():
    logits = np.eye(4)[[0, 1, 2, 3, 0]] * 5
    samples = {"pool": np.random.default_rng(0).standard_normal((5, 2)), "logits": logits}
    out = compute_metrics(
        samples, {"pool": samples["pool"]}, requested_labels=[0, 1, 2, 0, 0], kid_subsets=1
    )
    assert out["accuracy"] == pytest.approx(0.8)
    assert class_accuracy(logits, np.array([0, 1, 2, 3, 0])) == 1.0
    with pytest.raises(GdmError, match="requested_labels shape"):
        compute_metrics(samples, {"pool": samples["pool"]}, requested_labels=[0, 1])
    no_logits = {"pool": samples["pool"], "logits_unbiased": logits}
    with pytest.raises(GdmError, match="no 'logits'"):
        compute_metrics(no_logits, {"pool": samples["pool"]}, requested_labels=[0] * 5)


def test_missing_inputs():
    with pytest.raises(GdmError, match="'pool'"):
        compute_metrics({"logits": np.zeros((3, 2))}, {"pool": np.zeros((3, 2))})
    with pytest.raises(GdmError, match="reference needs"):
        compute_metrics(_feats(10), {"spatial": np.zeros((3, 2))})


def test_stats_cache_round_trip_and_misses(tmp_path):
    cache = StatsCache(tmp_path / "cache")
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1)
    key = StatsKey(content_hash(data), "train", "inception-v3-compat", "ab" * 32)
    assert cache.get(key) is None
    feats = {"pool": np.ones((2, 5), np.float32), "spatial": np.zeros((2, 3))}
    path = cache.put(key, feats)
    got = cache.get(tuple(key))
    assert sorted(got) == ["pool", "spatial"]
    np.testing.assert_array_equal(got["pool"], feats["pool"])
    assert got["pool"].dtype == np.float32
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # atomic: no temp files
    assert cache.get(key._replace(split="val")) is None
    # A file at the same path holding another key (hash-prefix collision) is a miss.
    other = key._replace(dataset_hash=key.dataset_hash + "0")
    assert cache.path(other) == path
    assert cache.get(other) is None
    path.write_bytes(b"corrupt")
    assert cache.get(key) is None


def test_content_hash_sees_dtype_shape_and_bytes():
    a = np.zeros((2, 3), np.uint8)
    assert content_hash(a) == content_hash(a.copy())
    assert content_hash(a) != content_hash(a.reshape(3, 2))
    assert content_hash(a) != content_hash(a.astype(np.int8))
    b = a.copy()
    b[0, 0] = 1
    assert content_hash(a) != content_hash(b)


def test_stats_cache_rejects_bad_keys(tmp_path):
    with pytest.raises(GdmError, match="split"):
        StatsCache(tmp_path).path(("h", "", "x", "w"))
