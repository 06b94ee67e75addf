import numpy as np
import pytest

from gdm.errors import DataError
from gdm.metrics import read_reference_stats, read_samples, write_reference_batch, write_samples


def _images(n=4, h=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, h, c), dtype=np.uint8)


def test_samples_round_trip_with_labels_and_extra(tmp_path):
    images, labels = _images(), np.array([3, 1, 4, 1])
    path = tmp_path / "out" / "samples.npz"
    write_samples(path, images, labels, extra={"guidance_scale": np.array(2.0)})
    got_images, got_labels = read_samples(path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert np.load(path)["guidance_scale"] == 2.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["samples.npz"]  # no temp files left


def test_samples_without_labels_and_grayscale(tmp_path):
    write_samples(tmp_path / "s.npz", _images(c=1))
    images, labels = read_samples(tmp_path / "s.npz")
    assert images.shape == (4, 8, 8, 1) and labels is None


@pytest.mark.parametrize(
    "array,expected",
    [
        (np.zeros((4, 8, 8, 3), np.float32), r"shape \(4, 8, 8, 3\) dtype float32"),
        (np.zeros((4, 8, 8), np.uint8), r"shape \(4, 8, 8\)"),
        (np.zeros((4, 3, 8, 8), np.uint8), r"NHWC.*shape \(4, 3, 8, 8\)"),
        (np.zeros((4, 8, 8, 2), np.uint8), r"C in \{1, 3\}"),
    ],
)
def test_bad_image_layout_names_file_shape_and_dtype(tmp_path, array, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, arr_0=array)
    with pytest.raises(DataError, match=expected) as info:
        read_samples(path)
    assert str(path) in str(info.value)


def test_other_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_samples(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        read_samples(tmp_path / "junk.npz")
    np.savez(tmp_path / "noarr.npz", images=_images())
    with pytest.raises(DataError, match="arr_0"):
        read_samples(tmp_path / "noarr.npz")
    np.savez(tmp_path / "labels.npz", arr_0=_images(), arr_1=np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"labels of shape \(4,\)"):
        read_samples(tmp_path / "labels.npz")
    with pytest.raises(DataError, match="dtype float64"):
        write_samples(tmp_path / "x.npz", _images().astype(np.float64))


def test_reference_batch_with_and_without_statistics(tmp_path):
    rng = np.random.default_rng(0)
    stats = {
        "mu": rng.standard_normal(5),
        "sigma": np.eye(5),
        "mu_s": np.zeros(3),
        "sigma_s": np.eye(3) * 2,
    }
    write_reference_batch(tmp_path / "ref.npz", _images(), stats)
    got = read_reference_stats(tmp_path / "ref.npz")
    assert sorted(got) == ["mu", "mu_s", "sigma", "sigma_s"]
    for key, value in stats.items():
        np.testing.assert_array_equal(got[key], value)
        assert got[key].dtype == np.float64
    assert read_samples(tmp_path / "ref.npz")[0].shape == (4, 8, 8, 3)

    write_reference_batch(tmp_path / "plain.npz", _images())
    assert read_reference_stats(tmp_path / "plain.npz") is None


def test_reference_statistics_errors(tmp_path):
    np.savez(tmp_path / "half.npz", arr_0=_images(), mu=np.zeros(3))
    with pytest.raises(DataError, match="need both"):
        read_reference_stats(tmp_path / "half.npz")
    np.savez(tmp_path / "shape.npz", arr_0=_images(), mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(DataError, match=r"got \(3,\) and \(4, 4\)"):
        read_reference_stats(tmp_path / "shape.npz")
    with pytest.raises(DataError, match="unknown stats keys"):
        write_reference_batch(tmp_path / "x.npz", _images(), {"mean": np.zeros(2)})
