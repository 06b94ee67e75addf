"""MLflow as a user meets it: experiment kind, artifact locations (local and S3), system metrics,
promotion, and s3:// settings honoured or refused at load."""

from __future__ import annotations

import time

import pytest

from gdm.config import validate
from gdm.errors import ConfigError, GdmError
from gdm.tracking import Tracker, promote
from tests.tracking_fixtures import mlflow_sandbox_fixture, mlflow_template_db_fixture  # noqa: F401


def _client(sandbox):
    from mlflow import MlflowClient

    return MlflowClient(sandbox.cfg.tracking_uri)


def test_experiment_opens_on_training_runs(mlflow_sandbox):
    client = _client(mlflow_sandbox)
    old = client.create_experiment("made-elsewhere")  # an experiment gdm did not create has no kind
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    for name in ("gdm-test", "made-elsewhere"):
        cfg = mlflow_sandbox.cfg.model_copy(update={"experiment": name})
        with Tracker(cfg, artifact_location=None if name == "made-elsewhere" else mlflow_sandbox.artifact_location
                     ).start_run("r"):
            pass
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"


def test_changed_artifact_location_of_an_existing_experiment_is_an_error(mlflow_sandbox, tmp_path):
    with Tracker(mlflow_sandbox.cfg, artifact_location=mlflow_sandbox.artifact_location).start_run("first"):
        pass
    with Tracker(mlflow_sandbox.cfg, artifact_location=str(mlflow_sandbox.artifact_location)).start_run("same"):
        pass  # the same place written differently is fine
    with pytest.raises(ConfigError) as err:
        Tracker(mlflow_sandbox.cfg, artifact_location="s3://other-bucket/gdm").start_run("moved")
    msg = str(err.value)
    assert "s3://other-bucket/gdm" in msg and str(mlflow_sandbox.artifact_location) in msg and "gdm-test" in msg


@pytest.mark.s3
def test_s3_artifact_location_is_honoured(mlflow_sandbox, s3_bucket, tmp_path):
    f = tmp_path / "metrics.json"
    f.write_text("{}")
    location = f"{s3_bucket.url}/mlflow"
    with Tracker(mlflow_sandbox.cfg, artifact_location=location).start_run("s3") as run:
        run.log_artifact(f, "metrics")
    assert _client(mlflow_sandbox).get_experiment_by_name("gdm-test").artifact_location == location
    assert [k for k in s3_bucket.keys("mlflow/") if k.endswith("metrics/metrics.json")]


def test_system_metrics_on_a_training_run(mlflow_sandbox):
    cfg = mlflow_sandbox.cfg.model_copy(update={"system_metrics_interval": 0.2})
    run = Tracker(cfg, artifact_location=mlflow_sandbox.artifact_location).start_run("train")
    with run, run.system_metrics():
        time.sleep(1.0)
    metrics = _client(mlflow_sandbox).get_run(run.id).data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)
    assert any(k.startswith("system/system_memory") for k in metrics), sorted(metrics)


def test_promote_names_what_is_missing(mlflow_sandbox):
    with pytest.raises(GdmError, match="'gdm-unet-nope'"):
        promote(mlflow_sandbox.cfg, "gdm-unet-nope", "champion")


@pytest.mark.parametrize("raw, key", [
    ({"pipeline": {"runs_dir": "s3://bucket/runs"}}, "pipeline.runs_dir"),
    ({"pipeline": {"reports_dir": "s3://bucket/reports"}}, "pipeline.reports_dir"),
    ({"eval": {"cache_dir": "s3://bucket/cache"}}, "eval.cache_dir"),
    ({"eval": {"inception_weights": "s3://bucket/w.pth"}}, "eval.inception_weights"),
    ({"tracking": {"tracking_uri": "s3://bucket/mlflow"}}, "tracking.tracking_uri"),
    ({"tracking": {"artifact_location": "s3:/bucket"}}, "tracking.artifact_location"),
])
def test_s3_values_that_cannot_be_honoured_are_refused_at_load(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(raw)


def test_s3_artifact_location_is_accepted():
    assert validate({"tracking": {"artifact_location": "s3://bucket/gdm"}}).tracking.artifact_location == "s3://bucket/gdm"
