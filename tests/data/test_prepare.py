import io
import json
import pickle
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gdm.config import DataConfig
from gdm.data.dataset import load_split_uint8, read_manifest
from gdm.data.prepare import prepare_dataset, stratified_split
from gdm.data.preprocess import center_crop_resize, to_mode
from gdm.data.reader import RowReader
from gdm.errors import DataError


def _save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@pytest.fixture
def imagefolder(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(4):
            arr = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            modes = [Image.fromarray(arr), Image.fromarray(arr[..., 0]), Image.fromarray(arr).convert("RGBA"),
                     Image.fromarray(arr).convert("P")]
            _save(modes[i], root / cls / f"{cls}_{i}.png")
    return root


def cfg(tmp_path, **kw):
    base = {"out_dir": str(tmp_path / "prepared"), "resolution": 8, "channels": 3, "val_fraction": 0.25}
    base.update(kw)
    return DataConfig(**base)


def test_digits_end_to_end(tmp_path):
    out = prepare_dataset(cfg(tmp_path, channels=1, val_fraction=0.2))
    m = read_manifest(out).raw
    assert m["num_images"] == 1797 and m["num_classes"] == 10
    assert m["split_sizes"]["train"] + m["split_sizes"]["val"] == 1797
    assert abs(m["split_sizes"]["val"] - 0.2 * 1797) < 10
    for c in range(10):  # stratified: every class in both splits, ~20% in val
        tr, va = m["class_counts"]["train"][str(c)], m["class_counts"]["val"][str(c)]
        assert abs(va / (tr + va) - 0.2) < 0.02
    x, y = RowReader(out, "train").take([0])
    x, y = x[0], y[0]
    assert x.shape == (1, 8, 8) and x.min() >= -1 and x.max() <= 1 and 0 <= int(y) < 10
    assert (out / "grid.png").is_file()
    table = pq.read_table(out / "train-00000.parquet")
    assert table.column_names == ["id", "image", "label", "split", "source"]
    assert len(set(table.column("id").to_pylist())) == table.num_rows


def test_digits_resized_to_16_rgb(tmp_path):
    out = prepare_dataset(cfg(tmp_path, resolution=16, channels=3))
    images, _labels = load_split_uint8(out, "val")
    assert images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8


def test_shards_and_manifest_are_byte_identical_on_rerun(tmp_path):
    a = prepare_dataset(cfg(tmp_path, channels=1, shard_size=500), out_dir=tmp_path / "a")
    b = prepare_dataset(cfg(tmp_path, channels=1, shard_size=500), out_dir=tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len([n for n in names if n.endswith(".parquet")]) == 4
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(3), 10)
    s1, s2 = stratified_split(labels, 0.3, 1), stratified_split(labels, 0.3, 1)
    assert (s1 == s2).all() and (stratified_split(labels, 0.3, 2) != s1).any()
    assert [int(s1[labels == c].sum()) for c in range(3)] == [3, 3, 3]


def test_imagefolder_subfolders_mixed_modes(imagefolder, tmp_path):
    out = prepare_dataset(cfg(tmp_path, source="imagefolder", path=str(imagefolder)))
    m = read_manifest(out).raw
    assert m["class_names"] == ["cat", "dog"] and m["num_images"] == 8
    images, _ = load_split_uint8(out, "train")
    assert images.shape[1:] == (8, 8, 3)


def test_imagefolder_filename_labels_and_unconditional(imagefolder, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in imagefolder.rglob("*.png"):
        (flat / p.name).write_bytes(p.read_bytes())
    m = read_manifest(prepare_dataset(cfg(tmp_path, source="imagefolder", path=str(flat)))).raw
    assert m["class_names"] == ["cat", "dog"]
    m = read_manifest(prepare_dataset(cfg(tmp_path, source="imagefolder", path=str(flat), labels="none"))).raw
    assert m["conditional"] is False and m["num_classes"] == 0


def test_corrupt_file_errors_by_name_or_is_skipped(imagefolder, tmp_path):
    bad = imagefolder / "dog" / "dog_9.png"
    good = (imagefolder / "dog" / "dog_0.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated
    (imagefolder / "cat" / "notes.txt").write_text("not an image")
    c = cfg(tmp_path, source="imagefolder", path=str(imagefolder))
    with pytest.raises(DataError, match="notes.txt|dog_9.png"):
        prepare_dataset(c)
    assert not c.prepared_dir.exists()  # nothing half-written
    parent = c.prepared_dir.parent
    assert not parent.exists() or not any(p.name.endswith(".tmp") for p in parent.iterdir())
    out = prepare_dataset(cfg(tmp_path, source="imagefolder", path=str(imagefolder), on_bad_image="skip"))
    skipped = read_manifest(out).raw["skipped"]
    assert skipped["count"] == 2 and any("dog_9.png" in f for f in skipped["files"])


def test_failed_rerun_keeps_previous_dataset(imagefolder, tmp_path):
    c = cfg(tmp_path, source="imagefolder", path=str(imagefolder))
    out = prepare_dataset(c)
    before = (out / "manifest.json").read_bytes()
    (imagefolder / "cat" / "cat_x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cat_x.png"):
        prepare_dataset(c)
    assert (out / "manifest.json").read_bytes() == before


def test_small_image_missing_and_empty_paths(tmp_path):
    root = tmp_path / "small"
    _save(Image.new("RGB", (4, 4)), root / "a" / "x.png")
    with pytest.raises(DataError, match="x.png.*smaller than data.resolution 8"):
        prepare_dataset(cfg(tmp_path, source="imagefolder", path=str(root)))
    with pytest.raises(DataError, match="not found"):
        prepare_dataset(cfg(tmp_path, source="imagefolder", path=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        prepare_dataset(cfg(tmp_path, source="imagefolder", path=str(tmp_path / "empty")))


def _cifar_archive(path, n=6, corrupt=False):
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
            data = pickle.dumps(batch)
            if corrupt and name == "test_batch":
                data = data[:20]
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        meta = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]})
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))


def test_cifar10_archive(tmp_path):
    arc = tmp_path / "cifar-10-python.tar.gz"
    _cifar_archive(arc)
    out = prepare_dataset(cfg(tmp_path, source="cifar10", path=str(arc), resolution=32))
    m = read_manifest(out).raw
    assert m["split_sizes"] == {"train": 30, "val": 6}  # official split: test_batch -> val
    assert m["class_names"][:2] == ["c0", "c1"]
    images, _ = load_split_uint8(out, "val")
    assert images.shape == (6, 32, 32, 3)


def test_cifar10_corrupt_archive_and_code_payload(tmp_path):
    arc = tmp_path / "bad.tar.gz"
    _cifar_archive(arc, corrupt=True)
    with pytest.raises(DataError, match="test_batch"):
        prepare_dataset(cfg(tmp_path, source="cifar10", path=str(arc)))
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="junk.tar.gz"):
        prepare_dataset(cfg(tmp_path, source="cifar10", path=str(junk)))


def test_npz_source_and_layout_errors(tmp_path):
    good = tmp_path / "s.npz"
    np.savez(good, np.zeros((5, 8, 8, 3), np.uint8), np.arange(5) % 2)
    m = read_manifest(prepare_dataset(cfg(tmp_path, source="npz", path=str(good)))).raw
    assert m["num_images"] == 5 and m["num_classes"] == 2
    bad = tmp_path / "b.npz"
    np.savez(bad, np.zeros((5, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"b.npz: arr_0 must be uint8 \[N, H, W, C\].*float32"):
        prepare_dataset(cfg(tmp_path, source="npz", path=str(bad)))


def test_adm_resize_box_then_bicubic_center_crop():
    img = Image.fromarray(np.arange(64 * 40 * 3, dtype=np.uint32).reshape(40, 64, 3).astype(np.uint8))
    out = center_crop_resize(img, 8)
    assert out.size == (8, 8)
    assert to_mode(Image.new("P", (4, 4)), 3).mode == "RGB" and to_mode(Image.new("RGBA", (4, 4)), 1).mode == "L"


def test_manifest_format(tmp_path):
    out = prepare_dataset(cfg(tmp_path, channels=1))
    assert json.loads((out / "manifest.json").read_text())["format"] == "gdm-prepared-v1"
