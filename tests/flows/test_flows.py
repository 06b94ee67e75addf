"""The Prefect flows end to end on a tiny configuration (one harness for the whole session)."""

import shutil

import pytest

from gdm.config import load_config
from gdm.io import read_json
from tests.flows.conftest import write_params

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_template_db):
    root = tmp_path_factory.mktemp("flows")
    db = root / "mlflow.db"
    shutil.copy(mlflow_template_db, db)
    return root, write_params(root, db)


@pytest.fixture(scope="module")
def first_run(project):
    from flows.pipeline import pipeline

    _root, params = project
    return pipeline(params=params, progress=False)


def _client(params):
    from mlflow import MlflowClient

    return MlflowClient(load_config(params).tracking.tracking_uri)


def test_pipeline_flow_outputs_and_summary(project, first_run):
    root, params = project
    cfg = load_config(params)
    assert (root / "runs/cond/unet/model.pt").is_file()
    rows = read_json(root / "reports/summary.json")
    assert [(r["variant"], r["sampler"], r["scale"]) for r in rows] == [("cond", "ddim", 0.0), ("cond", "ddim", 2.0)]
    for r in rows:
        for key in ("variant", "sampler", "steps", "scale", "num_samples", "fid", "sfid", "is", "precision",
                    "recall", "accuracy", "features", "mlflow_run_id"):
            assert key in r, key
        assert r["num_samples"] == cfg.sample.num_samples and r["steps"] == 5 and r["features"] == "evaluator"
        assert r["mlflow_run_id"]
    assert (root / "reports/tradeoff.png").is_file()


def test_pipeline_flow_mlflow_runs_params_metrics_artifacts_registry(project, first_run):
    _root, params = project
    client = _client(params)
    exp = client.get_experiment_by_name("gdm-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    names = {r.info.run_name for r in children}
    assert {"train@cond", "train-classifier", "train-evaluator", "report"} <= names
    assert sum(n.startswith("sample@") for n in names) == 2 and sum(n.startswith("evaluate@") for n in names) == 2
    train = next(r for r in children if r.info.run_name == "train@cond")
    assert train.data.params["unet.model_channels"] == "32"
    assert train.data.tags["gdm.stage"] == "train" and "gdm.data_hash" in train.data.tags
    assert len(client.get_metric_history(train.info.run_id, "loss")) == 6  # logged every step
    arts = {a.path for a in client.list_artifacts(train.info.run_id, "model")}
    assert "model/model.pt" in arts and "model/config.yaml" in arts
    ev = next(r for r in children if r.info.run_name.startswith("evaluate@"))
    assert "fid" in ev.data.metrics and "precision" in ev.data.metrics
    mv = client.get_model_version_by_alias("gdm-unet-cond", "candidate")
    assert mv.run_id == train.info.run_id
    assert client.get_model_version_by_alias("gdm-classifier", "candidate")


def test_second_run_reuses_cached_stages(project, first_run, monkeypatch):
    import flows.tasks as ft
    from flows.pipeline import pipeline

    root, params = project
    calls = []
    real = ft.execute
    monkeypatch.setattr(ft, "execute", lambda cfg, stage, *a: calls.append(stage.name) or real(cfg, stage, *a))
    again = pipeline(params=params, progress=False)
    assert calls == []  # every stage answered from the cache
    assert again["train@cond"]["model"] == first_run["train@cond"]["model"]
    # a deleted output forces that stage to run again, and whatever reads it (its timing changed)
    shutil.rmtree(root / "runs/cond/samples/ddim-2.0")
    pipeline(params=params, progress=False)
    assert calls == ["sample@cond-ddim-2.0", "evaluate@cond-ddim-2.0", "report"]


def test_reevaluate_flow_scores_registered_model_and_compares(project, first_run):
    from flows.reevaluate import reevaluate

    _root, params = project
    first = reevaluate(params=params)
    assert first[0]["model"] == "gdm-unet-cond" and first[0]["previous_fid"] is None
    second = reevaluate(params=params)
    assert second[0]["previous_fid"] == pytest.approx(first[0]["fid"])
    assert second[0]["delta_fid"] == pytest.approx(0.0, abs=1e-9) and not second[0]["flagged"]
    client = _client(params)
    run = client.get_run(second[0]["mlflow_run_id"])
    assert run.data.tags["gdm.evaluates"] == f"gdm-unet-cond:{second[0]['version']}"


def test_ablation_flow_over_two_variants(project, first_run):
    from flows.ablation import ablation

    root, params = project
    results = ablation(params=params)
    assert set(results) == {"base", "biggan", "ablation-report"}
    rows = read_json(root / "reports/ablation.json")
    assert [r["variant"] for r in rows] == ["base", "biggan"]
    assert rows[0]["delta_fid"] == 0.0 and rows[1]["num_parameters"] != rows[0]["num_parameters"]
    assert all(r["train_images_per_s"] > 0 and r["sample_seconds_per_image"] > 0 for r in rows)


def test_deployments_build_offline_with_schedule():
    from flows.deploy import local_deployments, pool_deployments

    local = {d.name: d for d in local_deployments()}
    assert set(local) == {"manual", "nightly"}
    crons = [s.schedule.cron for s in local["nightly"].schedules]
    assert crons == ["0 3 * * *"]
    (gpu,) = pool_deployments()
    assert gpu.work_pool_name == "gpu"


def test_guidance_sweep_flow_adds_only_the_new_scale(project, first_run, monkeypatch):
    import flows.tasks as ft
    from flows.guidance_sweep import guidance_sweep

    _root, params = project
    calls = []
    real = ft.execute
    monkeypatch.setattr(ft, "execute", lambda cfg, stage, *a: calls.append(stage.name) or real(cfg, stage, *a))
    out = guidance_sweep(params=params, scales=[0.0, 1.0])
    assert calls == ["sample@cond-ddim-1.0", "evaluate@cond-ddim-1.0"]
    assert out["evaluate@cond-ddim-1.0"]["accuracy"] is not None
