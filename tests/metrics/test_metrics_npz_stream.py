"""Streaming .npz sample files: written chunk by chunk, read batch by batch, memory bounded by a batch."""

import tracemalloc
import zipfile

import numpy as np
import pytest

from gdm.errors import DataError
from gdm.evaluation import Extractor, npz_features
from gdm.metrics import write_samples
from gdm.metrics.npz import image_header, iter_images, read_labels, sample_writer


def _images(n, h=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, h, c), dtype=np.uint8)


def test_chunked_writer_gives_the_bytes_of_one_write_and_reads_back_in_batches(tmp_path):
    images, labels = _images(11), np.arange(11) % 4
    write_samples(tmp_path / "one.npz", images, labels)
    with sample_writer(tmp_path / "chunks.npz", 11, (8, 8, 3)) as w:
        for s in range(0, 11, 4):
            w.append(images[s : s + 4], labels[s : s + 4])
    assert (tmp_path / "chunks.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    batches = list(iter_images(tmp_path / "chunks.npz", 3))
    assert [len(b) for b in batches] == [3, 3, 3, 2] and batches[0].flags.writeable
    np.testing.assert_array_equal(np.concatenate(batches), images)
    assert image_header(tmp_path / "one.npz") == (11, (8, 8, 3))
    np.testing.assert_array_equal(read_labels(tmp_path / "one.npz"), labels)


def test_writer_that_falls_short_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match="3 images written, 5 announced"), \
            sample_writer(tmp_path / "s.npz", 5, (8, 8, 3)) as w:
        w.append(_images(3), np.zeros(3, np.int64))
    assert list(tmp_path.iterdir()) == []


def test_truncated_and_wrongly_laid_out_files_are_named(tmp_path):
    write_samples(tmp_path / "s.npz", _images(6))
    raw = zipfile.ZipFile(tmp_path / "s.npz").read("arr_0.npy")
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as z:
        z.writestr("arr_0.npy", raw[:-100])
    with pytest.raises(DataError, match=r"cut.npz: arr_0 is truncated \(header says 6 images\)"):
        list(iter_images(tmp_path / "cut.npz", 4))
    np.savez(tmp_path / "fortran.npz", arr_0=np.asfortranarray(_images(2)))
    with pytest.raises(DataError, match="Fortran order"):
        image_header(tmp_path / "fortran.npz")
    np.savez(tmp_path / "floats.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(DataError, match="floats.npz arr_0: expected uint8"):
        image_header(tmp_path / "floats.npz")


def test_npz_features_stream_with_memory_bounded_by_a_batch(tmp_path):
    n, batch = 1500, 50
    images = _images(n, h=64)  # 18 MB of uint8
    write_samples(tmp_path / "big.npz", images)
    del images

    def feats(imgs):  # a float copy of the batch, as the real extractors make
        x = imgs.astype(np.float32) / 127.5 - 1
        return {"pool": x.reshape(len(x), -1)[:, :8].astype(np.float64)}

    ex = Extractor("toy", "0", feats, (64, 64, 3), False, batch)
    tracemalloc.start()
    out = npz_features(ex, tmp_path / "big.npz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out["pool"].shape == (n, 8)
    assert peak < 4 * batch * 64 * 64 * 3 * 4  # a few float batches (2.5 MB each), not 18 MB of uint8 + 74 MB float
    whole = feats(np.concatenate(list(iter_images(tmp_path / "big.npz", n))))
    np.testing.assert_array_equal(out["pool"], whole["pool"])
