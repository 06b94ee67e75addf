"""Scoring sample files (gdm.evaluation) with a briefly trained evaluator on the prepared digits.

Real validation images scored as "samples" against the training split must look like data (small
FID, precision/recall near 1, accuracy = the evaluator's validation accuracy); uniform noise must
not. Reference features are cached; bad sample files raise DataError naming the problem.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gdm import evaluation, stages
from gdm.data.dataset import read_manifest
from gdm.data.prepare import prepare_dataset
from gdm.errors import DataError
from gdm.evaluation import evaluate_file, write_reference_batch
from gdm.io import read_json, sha256_file
from gdm.metrics import StatsCache, StatsKey, write_samples
from tests.helpers import tiny_config

EVALUATOR = {"steps": 150}  # the default evaluator, trained briefly


@pytest.fixture(scope="module")
def one_thread():
    """These tensors are tiny: one intra-op thread is ~5x faster than two on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("evaluation")
    cfg = tiny_config(root, evaluator=EVALUATOR, tracking={"enabled": False})
    data = prepare_dataset(cfg.data)
    trained = stages.train_evaluator(cfg, progress=False)  # -> runs/evaluator/evaluator.pt
    val_ref = write_reference_batch(cfg, data, root / "val_ref.npz", "val")
    n_val = read_manifest(data).raw["split_sizes"]["val"]
    rng = np.random.default_rng(0)
    noise = root / "noise.npz"  # same N as the real "samples": FID's bias depends on N
    write_samples(noise, rng.integers(0, 256, (n_val, 8, 8, 1), dtype=np.uint8), np.arange(n_val) % 10)
    return SimpleNamespace(cfg=cfg, root=root, data=data, evaluator=trained["model"],
                           val_accuracy=trained["val_accuracy"], val_ref=val_ref, noise=noise,
                           n_val=n_val, real=evaluate_file(cfg, val_ref, data))


def test_real_validation_images_score_like_data(setup):
    m = setup.real
    assert m["features"] == "evaluator" and m["reference_split"] == "train"
    assert m["num_samples"] == setup.n_val and m["num_reference"] > setup.n_val
    assert 0 <= m["fid"] < 2.0
    assert m["precision"] > 0.8 and m["recall"] > 0.8
    assert setup.val_accuracy > 0.8  # the evaluator learned digits in 150 steps
    # arr_1 of the reference batch holds the true labels: accuracy is the evaluator's val accuracy
    assert m["accuracy"] == pytest.approx(setup.val_accuracy, abs=0.01)
    assert m["is"] == m["is_mean"] > 1.0


def test_uniform_noise_scores_far_from_data(setup):
    m = evaluate_file(setup.cfg, setup.noise, setup.data)
    assert m["fid"] > 10 * setup.real["fid"]
    assert m["sfid"] > setup.real["sfid"]
    assert m["accuracy"] < 0.25  # chance is 0.1
    assert m["is"] < setup.real["is"]


def test_reference_features_are_cached(setup, tmp_path, monkeypatch):
    cfg = setup.cfg.with_overrides({"eval.cache_dir": str(tmp_path / "cache")})
    calls = []
    make = evaluation.make_extractor

    def counting_extractor(cfg, path):
        ex = make(cfg, path)
        features = ex.features
        ex.features = lambda images: calls.append(len(images)) or features(images)
        return ex

    monkeypatch.setattr(evaluation, "make_extractor", counting_extractor)
    first = evaluate_file(cfg, setup.noise, setup.data)
    n_train = read_manifest(setup.data).raw["split_sizes"]["train"]
    bs = cfg.eval.batch_size  # samples stream in batches of eval.batch_size
    assert calls[0] == n_train and sum(calls[1:]) == setup.n_val and max(calls[1:]) <= bs  # miss: split, samples
    key = StatsKey(read_manifest(setup.data).content_hash, "train", "evaluator",
                   sha256_file(setup.evaluator))
    assert StatsCache(cfg.eval.cache_dir).path(key).is_file()
    calls.clear()
    second = evaluate_file(cfg, setup.noise, setup.data)
    assert sum(calls) == setup.n_val and max(calls) <= bs  # hit: only the samples are extracted
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-12)


def test_adm_reference_batch_as_reference(setup):
    # the same images as samples and reference: FID 0, every sample inside the other's manifold
    m = evaluate_file(setup.cfg, setup.val_ref, setup.val_ref)
    assert m["reference"] == str(setup.val_ref) and m["reference_split"] is None
    assert m["num_reference"] == setup.n_val
    assert m["fid"] == pytest.approx(0.0, abs=1e-4)
    assert m["precision"] == 1.0 and m["recall"] == 1.0


def test_wrong_layout_is_refused_naming_the_file(setup, tmp_path):
    path = tmp_path / "nchw.npz"
    np.savez(path, arr_0=np.zeros((10, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="nchw.npz") as err:
        evaluate_file(setup.cfg, path, setup.data)
    assert "NHWC" in str(err.value)


def test_resolution_mismatch(setup, tmp_path):
    path = tmp_path / "big.npz"
    write_samples(path, np.zeros((10, 16, 16, 1), np.uint8))
    with pytest.raises(DataError, match="resolution"):
        evaluate_file(setup.cfg, path, setup.data)


def test_too_few_samples(setup, tmp_path):
    path = tmp_path / "three.npz"
    write_samples(path, np.zeros((3, 8, 8, 1), np.uint8), np.arange(3))
    with pytest.raises(DataError, match="3 samples; at least"):
        evaluate_file(setup.cfg, path, setup.data)


def test_required_accuracy_needs_labels(setup, tmp_path):
    path = tmp_path / "unlabelled.npz"
    with np.load(setup.noise) as z:
        write_samples(path, z["arr_0"][:20])
    with pytest.raises(DataError, match="no arr_1 labels"):
        evaluate_file(setup.cfg, path, setup.data, require_accuracy=True)
    assert evaluate_file(setup.cfg, path, setup.data)["accuracy"] is None  # optional by default


def test_sample_directory_needs_exactly_one_npz(setup, tmp_path):
    with np.load(setup.noise) as z:
        images, labels = z["arr_0"][:20], z["arr_1"][:20]
    write_samples(tmp_path / "a.npz", images, labels)
    assert evaluate_file(setup.cfg, tmp_path, setup.data)["samples"] == str(tmp_path / "a.npz")
    write_samples(tmp_path / "b.npz", images, labels)
    with pytest.raises(DataError, match="exactly one .npz"):
        evaluate_file(setup.cfg, tmp_path, setup.data)


def test_evaluate_stage_writes_metrics_and_resolved_config(setup, tmp_path):
    out = tmp_path / "eval" / "noise.json"
    metrics = stages.evaluate(setup.cfg, setup.noise, out=out)
    written = read_json(out)
    for key in ("fid", "sfid", "is", "precision", "recall", "accuracy"):
        assert isinstance(written[key], float), key
        assert written[key] == pytest.approx(metrics[key])
    import yaml

    info = tmp_path / "eval-info" / "noise.json"  # kept out of eval/, which the report stage depends on
    beside = yaml.safe_load(info.with_suffix(".config.yaml").read_text())
    assert beside == setup.cfg.to_dict() and beside["tracking"]["enabled"] is False
    assert all(isinstance(v, (int, float)) for v in written.values())  # numbers only, for `dvc metrics show`
    assert read_json(info)["samples"] == str(setup.noise) and "mlflow_run_id" in read_json(info)
    assert sorted(p.name for p in out.parent.iterdir()) == ["noise.json"]
