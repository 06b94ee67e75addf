import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from gdm.data.reader import TensorRows
from gdm.errors import CheckpointError, GdmError
from gdm.metrics import (
    EvaluatorNet,
    extract_features,
    feature_statistics,
    frechet_distance,
    load_evaluator,
    random_translate,
    save_evaluator,
    train_evaluator,
    uint8_to_float,
)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.images / 8.0 - 1.0, dtype=torch.float32)[:, None]  # 0..16 -> [-1, 1]
    y = torch.tensor(d.target)
    i_tr, i_va = train_test_split(
        np.arange(len(y)), test_size=0.2, stratify=d.target, random_state=0
    )
    return x[i_tr], y[i_tr], x[i_va], y[i_va]


@pytest.fixture(scope="module")
def trained(digits):
    x_tr, y_tr, x_va, y_va = digits
    net = EvaluatorNet(image_size=8, in_channels=1, num_classes=10, seed=0)
    metrics = train_evaluator(
        net,
        TensorRows(x_tr, y_tr),
        TensorRows(x_va, y_va),
        steps=150,
        batch_size=128,
        lr=3e-3,
        generator=torch.Generator().manual_seed(0),
    )
    return net, metrics


def test_trains_on_digits(trained, digits):
    net, metrics = trained
    assert len(digits[0]) == 1437 and len(digits[2]) == 360
    assert metrics["val_accuracy"] >= 0.95
    assert metrics["train_loss"] < 0.5 and not net.training


def test_feature_shapes_and_pre_activation(trained, digits):
    net, _ = trained
    feats = extract_features(net, digits[2])
    assert feats["pool"].shape == (360, 64)
    assert feats["spatial"].shape == (360, 8 * 8 * 4)
    assert feats["logits"].shape == (360, 10)
    assert feats["pool"].dtype == np.float64
    assert feats["pool"].min() < -0.5  # below SiLU's minimum (-0.28): not post-activation


def test_real_vs_real_fid_small_noise_fid_large(trained, digits):
    net, _ = trained
    x_tr, _, x_va, _ = digits
    noise = torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    f_tr, f_va, f_noise = (extract_features(net, x)["pool"] for x in (x_tr, x_va, noise))
    real = frechet_distance(*feature_statistics(f_tr), *feature_statistics(f_va))
    fake = frechet_distance(*feature_statistics(f_noise), *feature_statistics(f_va))
    assert 0 < 20 * real < fake


@pytest.mark.parametrize("size,channels,spatial_dim", [(16, 3, 256), (32, 3, 256), (12, 1, 144)])
def test_other_sizes(size, channels, spatial_dim):
    net = EvaluatorNet(
        image_size=size, in_channels=channels, num_classes=7, width=16, feature_dim=32
    )
    out = net.forward_features(torch.zeros(2, channels, size, size))
    assert out["pool"].shape == (2, 32) and out["logits"].shape == (2, 7)
    assert out["spatial"].shape == (2, spatial_dim)


def test_seeded_init_and_bad_config():
    a = EvaluatorNet(image_size=8, in_channels=1, num_classes=3, seed=5)
    b = EvaluatorNet(image_size=8, in_channels=1, num_classes=3, seed=5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(GdmError, match="image_size"):
        EvaluatorNet(image_size=128, in_channels=1, num_classes=3)


def test_random_translate_is_a_shift_of_the_padded_image():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    out = random_translate(x, 1, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    for i in range(2):
        crops = [padded[i, :, dy : dy + 5, dx : dx + 5] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], c) for c in crops)


def test_save_load_round_trip(trained, tmp_path):
    net, metrics = trained
    save_evaluator(tmp_path / "ev.pt", net, metrics)
    loaded, got_metrics = load_evaluator(tmp_path / "ev.pt")
    assert got_metrics["val_accuracy"] == metrics["val_accuracy"]
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded(x), net(x))
    torch.save({"kind": "other"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a gdm evaluator"):
        load_evaluator(tmp_path / "other.pt")


def test_uint8_to_float():
    img = np.array([[[[0], [255]]]], dtype=np.uint8)  # 1 x 1 x 2 x 1 NHWC
    out = uint8_to_float(img)
    assert out.shape == (1, 1, 1, 2)
    assert out.flatten().tolist() == [-1.0, 1.0]
