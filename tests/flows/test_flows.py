"""The Prefect flows end to end on a tiny configuration (one harness for the whole session)."""

import shutil
from pathlib import Path

import pytest

from gdm.config import load_config
from gdm.io import read_json
from tests.flows.conftest import write_params


def write_yaml(path, raw) -> str:
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return str(path)

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_template_db):
    root = tmp_path_factory.mktemp("flows")
    db = root / "mlflow.db"
    shutil.copy(mlflow_template_db, db)
    return root, write_params(root, db, pipeline={"max_parallel": 1})  # sequential (the Dask run is compared)


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
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on training runs
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    names = {r.info.run_name for r in children}
    assert {"train@cond", "train-classifier", "train-evaluator", "report"} <= names
    assert sum(n.startswith("sample@") for n in names) == 2
    assert {"cond/ddim5/scale0.0", "cond/ddim5/scale2.0"} <= names  # one distinct name per scored result
    train = next(r for r in children if r.info.run_name == "train@cond")
    assert train.data.params["unet.model_channels"] == "32"
    assert train.data.tags["gdm.stage"] == "train" and "gdm.data_hash" in train.data.tags
    assert len(client.get_metric_history(train.info.run_id, "loss")) == 6  # logged every step
    arts = {a.path for a in client.list_artifacts(train.info.run_id, "model")}
    assert "model/MLmodel" in arts  # a real MLflow model, not loose files
    assert {a.path for a in client.list_artifacts(train.info.run_id, "files")} >= {"files/config.yaml"}
    ev = next(r for r in children if r.info.run_name == "cond/ddim5/scale2.0")
    assert "fid" in ev.data.metrics and "precision" in ev.data.metrics
    assert ev.data.params["gdm.variant"] == "cond" and ev.data.params["sample.scale"] == "2.0"
    assert ev.data.params["sample.guidance"] == "classifier" and ev.data.params["sample.sampler"] == "ddim"
    assert ev.data.params["sample.respacing"] == "5" and ev.data.params["sample.seed"] == "0"
    assert ev.data.params["unet.num_classes"] == "10" and ev.data.params["sample.num_samples"] == "6"
    mv = client.get_model_version_by_alias("gdm-unet-cond", "candidate")
    assert mv.run_id == train.info.run_id
    assert client.get_model_version_by_alias("gdm-classifier", "candidate")


def test_user_query_fid_by_variant_and_scale(project, first_run):
    """The query the issue's user typed returns the scored results, and they group by variant/scale."""
    _root, params = project
    client = _client(params)
    exp = client.get_experiment_by_name("gdm-test")
    found = client.search_runs([exp.experiment_id], "params.`gdm.variant` = 'cond' and metrics.fid < 1000",
                               order_by=["params.`sample.scale` ASC"])
    assert [(r.data.params["gdm.variant"], r.data.params["sample.scale"]) for r in found] == [("cond", "0.0"),
                                                                                                ("cond", "2.0")]
    # every run that logs the resolved config carries sample.guidance (the sweep's method, scale 0 included);
    # the scored ones have a FID
    guided = client.search_runs([exp.experiment_id], "params.`sample.guidance` = 'classifier' and "
                                "params.`sample.scale` != '0.0' and metrics.fid >= 0")
    assert [r.info.run_name for r in guided] == ["cond/ddim5/scale2.0"]


def test_registered_model_loads_as_pyfunc_and_samples_like_gdm_sample(project, first_run):
    import mlflow
    import numpy as np
    import pandas as pd

    from gdm.metrics.npz import read_samples

    root, params = project
    mlflow.set_registry_uri(load_config(params).tracking.tracking_uri)
    mlflow.set_tracking_uri(load_config(params).tracking.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model("models:/gdm-unet-cond@candidate")
        sig = model.metadata.signature
        assert [c.name for c in sig.inputs.inputs] == ["index", "label"] and sig.params is not None
        images, labels = read_samples(next((root / "runs/cond/samples/ddim-0.0").glob("*.npz")))
        out = model.predict(pd.DataFrame({"index": [1, 4], "label": labels[[1, 4]]}), params={"respacing": "5"})
    finally:
        mlflow.set_tracking_uri("")
        mlflow.set_registry_uri("")
    assert out.dtype == np.uint8 and out.shape == (2, *images.shape[1:])
    np.testing.assert_array_equal(out, images[[1, 4]])  # per-sample seeding: sample i is sample i


def test_adhoc_training_moves_no_alias_and_promote_is_explicit(project, first_run):
    from gdm import stages
    from gdm.tracking import promote

    _root, params = project
    cfg = load_config(params)
    client = _client(params)
    before = str(client.get_model_version_by_alias("gdm-unet-cond", "candidate").version)
    n_before = len(client.search_model_versions("name = 'gdm-unet-cond'"))
    r = stages.train(cfg, "cond", progress=False)  # an ad-hoc run (like `gdm train` without --register)
    assert r["model_version"] is None
    assert len(client.search_model_versions("name = 'gdm-unet-cond'")) == n_before
    assert str(client.get_model_version_by_alias("gdm-unet-cond", "candidate").version) == before
    done = promote(cfg.tracking, "gdm-unet-cond", "champion", from_alias="candidate")
    assert done["version"] == before and done["previous"] is None
    assert str(client.get_model_version_by_alias("gdm-unet-cond", "champion").version) == before


def test_pipeline_run_publishes_prefect_artifacts(project, first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.artifacts import key

    cfg = load_config(project[1])
    keys = [key(cfg, k) for k in ("stages", "summary", "summary-table", "tradeoff", "losses")]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    by_key = {a.key: a for a in arts}
    assert set(keys) <= set(by_key), sorted(by_key)
    assert by_key[key(cfg, "summary")].type == "markdown" and "| cond |" in by_key[key(cfg, "summary")].data
    assert by_key[key(cfg, "tradeoff")].type == "image"
    assert by_key[key(cfg, "summary-table")].type == "table"
    with get_client(sync_client=True) as client:  # long stages report progress inside Prefect
        prog = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["progress-train-cond"])))
    assert prog and all(a.type == "progress" for a in prog) and any(float(a.data) == 100.0 for a in prog)


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
    # a deleted output forces that stage to run again, and whatever reads it; the scores come out
    # byte-identical (deterministic stages, numbers-only metric files), so the report is reused
    shutil.rmtree(root / "runs/cond/samples/ddim-2.0")
    pipeline(params=params, progress=False)
    assert calls == ["sample@cond-ddim-2.0", "evaluate@cond-ddim-2.0"]


def test_reevaluate_flow_scores_registered_model_and_compares(project, first_run):
    from flows.reevaluate import DriftDetected, reevaluate

    _root, params = project
    first = reevaluate(params=params)
    assert first[0]["model"] == "gdm-unet-cond" and first[0]["previous_fid"] is None
    second = reevaluate(params=params)
    assert second[0]["previous_fid"] == pytest.approx(first[0]["fid"])
    assert second[0]["delta_fid"] == pytest.approx(0.0, abs=1e-9) and not second[0]["flagged"]
    assert second[0]["verdict"] == "within tolerance"
    client = _client(params)
    run = client.get_run(second[0]["mlflow_run_id"])
    assert run.data.tags["gdm.evaluates"] == f"gdm-unet-cond:{second[0]['version']}"
    assert run.data.metrics["delta_fid"] == pytest.approx(0.0, abs=1e-9) and run.data.metrics["within_tolerance"] == 1.0
    mv = client.get_model_version("gdm-unet-cond", second[0]["version"])
    assert mv.tags["gdm.reevaluate.verdict"] == "within tolerance"
    # other samples (another seed) move FID; with zero tolerance that is drift: the flow run fails
    with pytest.raises(DriftDetected, match="gdm-unet-cond"):
        reevaluate(params=params, overrides=["sample.seed=7", "tracking.reevaluate_tolerance=0.0"])
    mv = client.get_model_version("gdm-unet-cond", second[0]["version"])
    assert mv.tags["gdm.reevaluate.verdict"] == "drift"


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
    from flows.deploy import local_deployments

    local = {d.name: d for d in local_deployments()}
    assert set(local) == {"manual", "nightly"}
    crons = [s.schedule.cron for s in local["nightly"].schedules]
    assert crons == ["0 3 * * *"]


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


def test_dask_local_cluster_runs_the_dag_with_the_sequential_results(project, first_run, tmp_path):
    """Two Dask worker processes on 127.0.0.1 (prefect-dask) run the stages concurrently; every number
    equals the sequential thread-runner run's (the stages are deterministic)."""
    import yaml
    from prefect import flow

    from flows.pipeline import run_stages

    root, params = project
    raw = yaml.safe_load(Path(params).read_text())
    raw["data"]["out_dir"] = str(tmp_path / "prepared")
    raw["pipeline"].update(runs_dir=str(tmp_path / "runs"), reports_dir=str(tmp_path / "reports"),
                           task_runner="dask", dask_workers=2, max_parallel=None)
    raw["tracking"]["enabled"] = False
    cfg = load_config(write_yaml(tmp_path / "params.yaml", raw))
    names = ["prepare", "train-classifier", "train@cond", "train-evaluator", "sample@cond-ddim-2.0",
             "evaluate@cond-ddim-2.0"]

    @flow(name="gdm-dask-test")
    def on_dask():
        return run_stages(cfg, names, None, False, ablations=False)

    done = on_dask()
    assert set(done) == set(names)
    import numpy as np

    from gdm.metrics.npz import read_samples

    # the samples are bit-identical; the scores agree to float64 round-off (the matrix square root of
    # FID/sFID runs on BLAS, whose thread count differs between a Dask worker and this process)
    dask_npz, seq_npz = (next((r / "runs/cond/samples/ddim-2.0").glob("*.npz")) for r in (tmp_path, root))
    np.testing.assert_array_equal(read_samples(dask_npz)[0], read_samples(seq_npz)[0])
    dask_eval, seq_eval = (read_json(r / "runs/eval/cond-ddim-2.0.json") for r in (tmp_path, root))
    assert dask_eval == pytest.approx(seq_eval, rel=1e-9, abs=1e-12)
