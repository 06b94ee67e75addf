"""Prepared datasets on S3 (moto's S3 API server on 127.0.0.1): same bytes as local, atomic publishing,
refusals, and clear errors for every broken case the issue lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdm.config import DataConfig
from gdm.data import encode
from gdm.data.dataset import read_manifest
from gdm.data.prepare import prepare_dataset
from gdm.data.reader import StepReader
from gdm.data.storage import Location
from gdm.errors import DataError

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("s3src") / "src.npz"
    rng = np.random.default_rng(1)
    np.savez(path, arr_0=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), arr_1=np.arange(40) % 4)
    return str(path)


def cfg(out_dir, src, **kw) -> DataConfig:
    args = {"source": "npz", "path": src, "out_dir": str(out_dir), "name": "ds", "resolution": 8, "channels": 3,
            "shard_size": 12, "row_group_size": 4}
    args.update(kw)
    return DataConfig(**args)


def test_prepare_to_s3_is_byte_identical_to_local_and_reads_back(s3_bucket, npz, tmp_path):
    local = prepare_dataset(cfg(tmp_path, npz))
    url = prepare_dataset(cfg(f"{s3_bucket.url}/prep", npz, num_workers=2))
    assert url == f"{s3_bucket.url}/prep/ds"
    ml, ms = read_manifest(local), read_manifest(url)
    assert ms.content_hash == ml.content_hash
    assert [n.split("/")[-1] for n in ms.raw["shards"]] == ml.raw["shards"] and len(ml.raw["shards"]) == 4
    for s3_name, name in zip(ms.raw["shards"], ml.raw["shards"]):
        assert s3_bucket.get(f"prep/ds/{s3_name}") == (local / name).read_bytes()
    assert s3_bucket.get("prep/ds/grid.png") == (local / "grid.png").read_bytes()
    assert set(s3_bucket.keys("prep/ds/")) == {f"prep/ds/{k}" for k in ["manifest.json", "grid.png", *ms.raw["shards"]]}
    a = StepReader(url, batch_size=8, seed=0, shuffle_window=8, num_workers=1)
    b = StepReader(str(local), batch_size=8, seed=0, shuffle_window=8)
    for (k, (x, y)), k2 in zip(a.batches(0, 5), range(5)):
        xl, yl = b.batch(k2)
        assert k == k2 and torch.equal(x, xl) and torch.equal(y, yl)


def test_manifest_is_written_last_and_a_failed_run_keeps_the_previous_dataset(s3_bucket, npz, monkeypatch):
    written: list[str] = []
    real_write = Location.write_bytes

    def spy(self, name, data):
        written.append(name)
        return real_write(self, name, data)

    monkeypatch.setattr(Location, "write_bytes", spy)
    url = prepare_dataset(cfg(s3_bucket.url, npz))
    assert written[-1] == "manifest.json" and sum(n.endswith(".parquet") for n in written) == 4
    before = {k: s3_bucket.get(k) for k in s3_bucket.keys("")}

    real_encode = encode.encode_one
    calls = []

    def fail_late(data, entry, *a):  # the 30th image is unreadable: shards were already written by then
        calls.append(entry)
        return (None, f"{entry.source}: broken on purpose") if len(calls) == 30 else real_encode(data, entry, *a)

    monkeypatch.setattr(encode, "encode_one", fail_late)
    written.clear()
    with pytest.raises(DataError, match="broken on purpose"):
        prepare_dataset(cfg(s3_bucket.url, npz))
    assert any(n.endswith(".parquet") for n in written) and "manifest.json" not in written
    assert {k: s3_bucket.get(k) for k in s3_bucket.keys("")} == before  # partial generation removed, old intact
    assert StepReader(url, batch_size=4, seed=0).batch(0)[0].shape == (4, 3, 8, 8)


def test_rerun_replaces_the_generation_and_another_dataset_is_refused_unless_told(s3_bucket, npz):
    url = prepare_dataset(cfg(s3_bucket.url, npz))
    first = read_manifest(url).raw["shards"]
    prepare_dataset(cfg(s3_bucket.url, npz))  # same dataset: a rerun, old generation cleaned up
    second = read_manifest(url).raw["shards"]
    assert first != second and set(s3_bucket.keys()) == {f"ds/{k}" for k in ["manifest.json", "grid.png", *second]}
    with pytest.raises(DataError, match=r"holds another prepared dataset \(resolution: 8 there, 4 here\)"):
        prepare_dataset(cfg(s3_bucket.url, npz, resolution=4))
    assert read_manifest(url).raw["shards"] == second
    prepare_dataset(cfg(s3_bucket.url, npz, resolution=4, overwrite=True))
    assert read_manifest(url).resolution == 4 and not set(second) & {k[3:] for k in s3_bucket.keys("")}


def test_prefix_with_foreign_objects_is_refused(s3_bucket, npz):
    s3_bucket.server.client().put_object(Bucket=s3_bucket.name, Key="ds/notes.txt", Body=b"mine")
    with pytest.raises(DataError, match="holds no gdm dataset.*notes.txt"):
        prepare_dataset(cfg(s3_bucket.url, npz))
    assert s3_bucket.keys() == ["ds/notes.txt"]


def test_truncated_or_missing_shard_behind_a_valid_manifest_is_named(s3_bucket, npz):
    url = prepare_dataset(cfg(s3_bucket.url, npz))
    name = read_manifest(url).shard_names("train")[1]
    s3 = s3_bucket.server.client()
    data = s3_bucket.get(f"ds/{name}")
    s3.put_object(Bucket=s3_bucket.name, Key=f"ds/{name}", Body=data[:-100])
    with pytest.raises(DataError, match=rf"disagrees with the objects present: {name} \(\d+ bytes, expected"):
        StepReader(url, batch_size=4, seed=0)
    s3.delete_object(Bucket=s3_bucket.name, Key=f"ds/{name}")
    with pytest.raises(DataError, match=rf"{name} \(missing\)"):
        StepReader(url, batch_size=4, seed=0)


def test_imagefolder_source_on_s3_equals_the_local_folder(s3_bucket, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    s3 = s3_bucket.server.client()
    for cls in ("cat", "dog"):
        for i in range(5):
            f = tmp_path / "imgs" / cls / f"{i}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(f)
            s3.put_object(Bucket=s3_bucket.name, Key=f"imgs/{cls}/{i}.png", Body=f.read_bytes())
    kw = {"source": "imagefolder", "num_workers": 2}
    local = read_manifest(prepare_dataset(cfg(tmp_path / "a", str(tmp_path / "imgs"), **kw)))
    remote = read_manifest(prepare_dataset(cfg(tmp_path / "b", f"{s3_bucket.url}/imgs", **kw)))
    assert remote.content_hash == local.content_hash and remote.raw["class_names"] == ["cat", "dog"]


def test_storage_failures_name_the_cause(s3_bucket, npz, monkeypatch):
    with pytest.raises(DataError, match="s3://gdm-no-such-bucket/ds: the S3 bucket 'gdm-no-such-bucket' does not exist"):
        prepare_dataset(cfg("s3://gdm-no-such-bucket", npz))
    with s3_bucket.server.enforce_auth(), pytest.raises(DataError, match="access denied by S3"):
        prepare_dataset(cfg(s3_bucket.url, npz))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DataError, match=r"S3 endpoint unreachable \(AWS_ENDPOINT_URL=http://127.0.0.1:9\)"):
        prepare_dataset(cfg(s3_bucket.url, npz))
    assert s3_bucket.keys() == []  # nothing was written by any of the failed runs


def test_cli_prepare_overwrite_flag(s3_bucket, npz, tmp_path, capsys):
    from gdm.cli import main

    def gdm(*args: str) -> int:
        with pytest.raises(SystemExit) as exit_info:
            main(["prepare", "--quiet", "--params", str(params), *args])
        return exit_info.value.code

    params = tmp_path / "params.yaml"
    params.write_text(f"data: {{source: npz, path: {npz}, out_dir: '{s3_bucket.url}', name: ds, resolution: 8, "
                      "channels: 3, shard_size: 12}\n")
    assert gdm() == 0 and f"-> {s3_bucket.url}/ds" in capsys.readouterr().out
    assert gdm("--set", "data.channels=1") == 2
    assert "holds another prepared dataset (channels: 3 there, 1 here)" in capsys.readouterr().err
    assert gdm("--set", "data.channels=1", "--overwrite") == 0
    assert read_manifest(f"{s3_bucket.url}/ds").channels == 1
