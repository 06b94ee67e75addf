"""Parallel, streaming prepare: same bytes for any worker count; a crashing worker is found, not waited on."""

import os

import numpy as np
import pytest

from gdm.config import DataConfig, validate
from gdm.data import encode
from gdm.data.dataset import read_manifest
from gdm.data.prepare import prepare_dataset
from gdm.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("par") / "src.npz"
    rng = np.random.default_rng(3)
    np.savez(path, arr_0=rng.integers(0, 256, (150, 10, 10, 3), dtype=np.uint8), arr_1=np.arange(150) % 3)
    return str(path)


def cfg(out, src, **kw):
    return DataConfig(**{"source": "npz", "path": src, "out_dir": str(out), "name": "ds", "resolution": 8,
                         "channels": 3, "shard_size": 40, "row_group_size": 8, **kw})


def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_any_worker_count_gives_the_same_bytes(npz, tmp_path):
    outs = [prepare_dataset(cfg(tmp_path / f"w{w}", npz, num_workers=w)) for w in (0, 1, 3)]
    ref = files(outs[0])
    assert len([n for n in ref if n.endswith(".parquet")]) == 4  # 120 train rows in 40-row shards + val
    manifest = read_manifest(outs[0]).raw
    assert [i["row_groups"] for i in manifest["shard_info"].values()] == [[8] * 5] * 3 + [[8, 8, 8, 6]]
    for out in outs[1:]:
        got = files(out)
        assert got.keys() == ref.keys()
        assert all(got[n] == ref[n] for n in ref if n != "manifest.json")
        # the manifest differs only by the out_dir it records
        assert got["manifest.json"].replace(str(out.parent).encode(), b"X") == \
            ref["manifest.json"].replace(str(outs[0].parent).encode(), b"X")


def _die_on(sample_id):
    real = encode.encode_one

    def encode_one(data, entry, *args):
        if entry.sample_id == sample_id and os.getpid() != PARENT:
            os._exit(3)  # a hard crash inside a worker, as a segfaulting decoder would do
        return real(data, entry, *args)

    return encode_one


PARENT = os.getpid()


def test_a_worker_that_dies_on_one_image_is_skipped_or_named(npz, tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "encode_one", _die_on("npz:77"))
    out = prepare_dataset(cfg(tmp_path / "skip", npz, num_workers=2, on_bad_image="skip"))
    m = read_manifest(out).raw
    assert m["num_images"] == 149 and m["skipped"]["count"] == 1
    assert "77: the prepare worker process died" in m["skipped"]["files"][0]
    with pytest.raises(DataError, match="77: the prepare worker process died while processing this image"):
        prepare_dataset(cfg(tmp_path / "error", npz, num_workers=2))
    assert not (tmp_path / "error" / "ds").exists()


def test_negative_worker_count_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.num_workers"):
        validate({"data": {"num_workers": -1}}, origin="test")
