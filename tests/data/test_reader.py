"""StepReader / RowReader over prepared shards: rank slices, workers, flips, resume, damaged shards."""

import numpy as np
import pytest
import torch

from gdm.config import DataConfig
from gdm.data.dataset import load_split_uint8, read_manifest, to_float
from gdm.data.order import StepOrder, flip_mask
from gdm.data.prepare import prepare_dataset
from gdm.data.reader import RowReader, StepReader, iter_split
from gdm.errors import DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reader")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp / "src.npz", arr_0=images, arr_1=np.arange(60) % 5)
    cfg = DataConfig(source="npz", path=str(tmp / "src.npz"), out_dir=str(tmp / "prep"), resolution=8, channels=3,
                     val_fraction=0.2, shard_size=7)
    return prepare_dataset(cfg)


def reader(dataset, **kw):
    args = {"batch_size": 10, "seed": 3, "shuffle_window": 15}
    args.update(kw)
    return StepReader(str(dataset), "train", **args)


def test_batches_are_the_ordered_rows(dataset):
    images, labels = load_split_uint8(dataset, "train")
    r = reader(dataset)
    assert len(r) == len(labels) == 50 and len(r.index.blocks) == 8  # 7-row shards: several blocks
    order = StepOrder(r.index.block_rows, 10, 3, 15)
    for step in (0, 4, 9):
        x, y = r.batch(step)
        rows = order.global_rows(step).numpy()
        assert torch.equal(x, to_float(images[rows])) and torch.equal(y, torch.from_numpy(labels[rows]))


def test_two_ranks_read_disjoint_rows_whose_union_is_the_global_batch(dataset):
    one = reader(dataset)
    ranks = [reader(dataset, rank=r, world_size=2) for r in range(2)]
    for step in range(12):
        x, y = one.batch(step)
        parts = [r.batch(step) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_workers_and_resume_give_the_same_batches(dataset):
    ref = [reader(dataset).batch(k) for k in range(3, 9)]
    with_workers = list(reader(dataset, num_workers=2).batches(3, 9))
    assert [k for k, _ in with_workers] == list(range(3, 9))
    for (x, y), (_, (xw, yw)) in zip(ref, with_workers):
        assert torch.equal(x, xw) and torch.equal(y, yw)


def test_random_flip_mirrors_exactly_the_step_mask(dataset):
    plain, flipped = reader(dataset), reader(dataset, random_flip=True, rank=1, world_size=2)
    x, _ = plain.batch(5)
    xf, _ = flipped.batch(5)
    mask = flip_mask(3, 5, 10)[5:]
    assert 0 < int(mask.sum()) < 5  # this seed/step flips some rows and keeps others
    expected = torch.where(mask[:, None, None, None], x[5:].flip(-1), x[5:])
    assert torch.equal(xf, expected)


def test_row_reader_and_iter_split_stream_in_row_order(dataset):
    images, labels = load_split_uint8(dataset, "val")
    chunks = list(iter_split(dataset, "val", 4))
    assert [len(c[1]) for c in chunks] == [4, 4, 2]
    assert np.array_equal(np.concatenate([c[0] for c in chunks]), images)
    rr = RowReader(dataset, "val", cache_rows=1)  # tiny cache: rows re-read from the shards
    x, y = rr.take(torch.tensor([9, 0, 5]))
    assert torch.equal(x, to_float(images[[9, 0, 5]])) and y.tolist() == labels[[9, 0, 5]].tolist()


def test_damaged_or_missing_shard_is_named(dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    name = read_manifest(copy).shard_names("train")[2]
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=name):
        for k in range(10):
            reader(copy).batch(k)
    (copy / name).unlink()
    with pytest.raises(DataError, match=name):
        for k in range(10):
            reader(copy).batch(k)


def test_negative_workers_are_refused(dataset):
    with pytest.raises(DataError, match="num_workers"):
        reader(dataset, num_workers=-1)


def test_to_float_has_the_bits_of_the_torch_formula_for_every_byte():
    v = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    old = torch.from_numpy(v).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    new = to_float(v)
    assert torch.equal(new, old) and new.stride() == old.stride() and new.dtype == torch.float32
