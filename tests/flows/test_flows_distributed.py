"""A Prefect flow whose train stage has `train.nproc: 2`: the task re-launches the stage through
torchrun and the MLflow run of rank 0 is a child of the flow's run (distributed marker)."""

from __future__ import annotations

import shutil

import pytest

from gdm.config import load_config
from gdm.io import load_checkpoint
from tests.flows.conftest import write_params

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.distributed]


def test_flow_runs_a_two_rank_train_stage_tracked_under_its_parent(tmp_path, mlflow_template_db, monkeypatch):
    from mlflow import MlflowClient
    from prefect import flow

    from flows.pipeline import run_stages
    from gdm import stages as st

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template_db, db)
    params = write_params(tmp_path, db, train={"nproc": 2})

    @flow(name="gdm-ddp-train")
    def two_stages(params: str):
        cfg = load_config(params)
        with st.tracked(cfg, "pipeline", "pipeline") as parent:
            return parent.id, run_stages(cfg, ["prepare", "train@cond"], parent.id, False, False)

    parent_id, results = two_stages(params)
    cfg = load_config(params)
    assert load_checkpoint(results["train@cond"]["model"])["world_size"] == 2
    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(results["train@cond"]["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == parent_id and run.info.run_name == "train@cond"
    assert run.data.params["train.nproc"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == cfg.train.steps
