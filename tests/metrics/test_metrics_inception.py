"""Inception plumbing with RANDOMLY initialised weights (no real weights exist offline)."""

import socket

import numpy as np
import pytest
import torch

from gdm.errors import CheckpointError, GdmError
from gdm.metrics import (
    WEIGHTS_FILENAME,
    find_inception_weights,
    load_inception,
    make_random_inception_weights,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_random_inception_weights(tmp_path_factory.mktemp("w") / WEIGHTS_FILENAME, seed=0)


@pytest.fixture(scope="module")
def extractor(weights):
    return load_inception(weights)


def _images(n, c=3, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, size, size), dtype=np.uint8)


def test_extract_shapes_and_spatial_layout(extractor):
    captured = {}
    hook = extractor.model.Mixed_6d.branch1x1.register_forward_hook(
        lambda m, i, o: captured.setdefault("full", o.clone())
    )
    try:
        calls = []
        feats = extractor.extract(_images(4), batch_size=4, progress=lambda d, n: calls.append(d))
    finally:
        hook.remove()
    assert feats["pool"].shape == (4, 2048)
    assert feats["logits_unbiased"].shape == (4, 1008)
    assert feats["spatial"].shape == (4, 17 * 17 * 7)
    assert all(np.isfinite(v).all() for v in feats.values())
    assert calls == [4]
    full = captured["full"]  # N x 192 x 17 x 17, after ReLU
    assert full.shape == (4, 192, 17, 17) and (full >= 0).all()
    want = full[:, :7].permute(0, 2, 3, 1).reshape(4, -1).numpy()  # TF order: H, W, C
    np.testing.assert_array_equal(feats["spatial"], want)
    # logits_unbiased = pool_3 @ W, no bias
    w = extractor.model.fc.weight.detach().double().numpy()
    np.testing.assert_allclose(
        feats["logits_unbiased"], feats["pool"].astype(np.float64) @ w.T, rtol=1e-4, atol=1e-6
    )
    assert not extractor.name_hash_matches  # random weights are not the official file


def test_grayscale_is_repeated_to_three_channels(extractor):
    gray = _images(1, c=1, size=16, seed=1)
    a = extractor.extract(gray)
    b = extractor.extract(np.repeat(gray, 3, axis=1))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["pool"].std() > 0
    with pytest.raises(GdmError, match="uint8"):
        extractor.extract(gray.astype(np.float32))


def test_find_in_folder_and_hub_cache(tmp_path, weights, monkeypatch):
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / WEIGHTS_FILENAME).symlink_to(weights)
    assert find_inception_weights(folder) == folder / WEIGHTS_FILENAME
    (folder / "renamed.bin").symlink_to(weights)
    assert find_inception_weights(folder / "renamed.bin") == folder / "renamed.bin"
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / WEIGHTS_FILENAME).symlink_to(weights)
    assert find_inception_weights(hub_dir=hub) == hub / "checkpoints" / WEIGHTS_FILENAME
    # Default hub dir follows TORCH_HOME: $TORCH_HOME/hub/checkpoints/<file>
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    (tmp_path / "th" / "hub").mkdir(parents=True)
    (tmp_path / "th" / "hub" / "checkpoints").symlink_to(hub / "checkpoints")
    found = find_inception_weights()
    assert found == tmp_path / "th" / "hub" / "checkpoints" / WEIGHTS_FILENAME


def test_load_from_temporary_hub_cache(tmp_path, weights, extractor, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / WEIGHTS_FILENAME).symlink_to(weights)
    loaded = load_inception()
    assert loaded.weights_sha256 == extractor.weights_sha256
    want = extractor.model.state_dict()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, want[key]), key


def test_absent_file_error_lists_name_and_every_path(tmp_path):
    with pytest.raises(GdmError) as info:
        find_inception_weights(hub_dir=tmp_path / "hub")
    msg = str(info.value)
    assert WEIGHTS_FILENAME in msg
    assert str(tmp_path / "hub" / "checkpoints" / WEIGHTS_FILENAME) in msg
    assert str(tmp_path / "hub" / WEIGHTS_FILENAME) in msg
    with pytest.raises(GdmError) as info:
        load_inception(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / WEIGHTS_FILENAME) in str(info.value)
    assert str(tmp_path / "nowhere" / "checkpoints" / WEIGHTS_FILENAME) in str(info.value)


class Payload:  # any non-allowlisted class forces pickle code execution on load
    pass


def test_pickle_payload_is_refused(tmp_path):
    path = tmp_path / WEIGHTS_FILENAME
    torch.save({"fc.weight": torch.zeros(2), "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_inception(path)


def test_wrong_state_dict_is_refused(tmp_path):
    path = tmp_path / WEIGHTS_FILENAME
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not a torch-fidelity Inception-V3 state dict"):
        load_inception(path)
    torch.save({"fc.weight": torch.zeros(2, 2), "note": "hello"}, path)
    with pytest.raises(CheckpointError, match="non-tensor keys"):
        load_inception(path)
