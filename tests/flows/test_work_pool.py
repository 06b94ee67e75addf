"""The work-pool journey as a user runs it, against a real `prefect server` and a process worker.

    prefect work-pool create <pool> --type process
    GDM_GPU_POOL=<pool> python -m flows.deploy --pools        # = prefect deploy --all, knobs applied
    GDM_REPO=<checkout> prefect worker start --pool <pool>    # (the test starts it outside the checkout)
    prefect deployment run gdm-pipeline/pipeline-pool --watch

with tiny params and `pipeline.dispatch: deployments`, so the pipeline run sends its heavy stages to the
`gdm-stage/stage` deployment on the same pool: one test covers the shipped prefect.yaml, the pull step,
the env knobs, logs reaching the API, artifacts, and stage dispatch through shared storage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.flows.servers import BIN, ROOT, start_worker, stop
from tests.helpers import TINY

pytestmark = pytest.mark.slow


def _cli(server, cwd, *args, env=None, timeout=300):
    res = subprocess.run(args, cwd=cwd, env={**server.env, **(env or {})}, capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert res.returncode == 0, f"{' '.join(args)} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _checkout(root):
    """A gdm checkout on the 'worker host': project files, tiny params, outputs under it."""
    proj = root / "checkout"
    proj.mkdir()
    for f in ("dvc.yaml", "prefect.yaml"):
        shutil.copy(ROOT / f, proj / f)
    os.symlink(ROOT / "flows", proj / "flows")
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["evaluator"] = {"steps": 20, "batch_size": 32}
    raw["eval"] = {"kid_subset_size": 4, "kid_subsets": 2}
    raw["tracking"] = {"enabled": False}
    raw["pipeline"] = {"models": {"cond": {}}, "dispatch": "deployments", "stage_threads": 1}
    (proj / "params.yaml").write_text(yaml.safe_dump(raw))
    return proj


def test_pipeline_deployment_runs_on_a_process_pool_and_dispatches_stages(prefect_server, tmp_path):
    server, pool = prefect_server, "gdm-test-pool"
    proj = _checkout(tmp_path)
    _cli(server, proj, str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process")
    _cli(server, proj, sys.executable, "-m", "flows.deploy", "--pools", env={"GDM_GPU_POOL": pool})
    deployments = server.api("POST", "/deployments/filter", {})
    pools = {d["name"]: d["work_pool_name"] for d in deployments}
    assert pools == {"pipeline-pool": pool, "ablation-pool": pool, "nightly-pool": pool, "stage": pool}
    elsewhere = tmp_path / "worker-cwd"  # GDM_REPO, not the worker's directory, names the checkout
    elsewhere.mkdir()
    worker = start_worker(server, pool, elsewhere, env={"GDM_REPO": str(proj)})
    try:
        run = _cli(server, proj, str(BIN / "prefect"), "deployment", "run", "gdm-pipeline/pipeline-pool",
                   "--watch", "--watch-timeout", "400", timeout=450)
    finally:
        stop(worker)
    flow_runs = server.api("POST", "/flow_runs/filter", {})
    by_name = {}
    for fr in flow_runs:
        by_name.setdefault(fr["deployment_id"], []).append(fr)
    ids = {d["name"]: d["id"] for d in deployments}
    (pipeline_run,) = by_name[ids["pipeline-pool"]]
    assert pipeline_run["state"]["type"] == "COMPLETED", run.stdout[-2000:]
    stage_runs = {fr["name"]: fr["state"]["type"] for fr in by_name[ids["stage"]]}
    assert stage_runs == {"train@cond": "COMPLETED", "train-classifier": "COMPLETED",
                          "train-evaluator": "COMPLETED", "sample@cond-ddim-0.0": "COMPLETED"}
    # the run is not silent: our INFO lines reach the API (what the UI's Logs tab shows)
    logs = server.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [pipeline_run["id"]]}}})
    messages = "\n".join(entry["message"] for entry in logs)
    assert "stages in" in messages and "evaluate@cond-ddim-0.0: done" in messages, messages[-2000:]
    train_run = next(fr for fr in by_name[ids["stage"]] if fr["name"] == "train@cond")
    train_logs = server.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [train_run["id"]]}}})
    assert any("train cond: 6/6 (100%)" in entry["message"] for entry in train_logs)  # progress, inside Prefect
    arts = server.api("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [pipeline_run["id"]]}}})
    assert {"table", "markdown", "image"} <= {a["type"] for a in arts}
    # outputs landed in the checkout (the shared storage every stage run saw)
    assert (proj / "reports/summary.json").is_file() and (proj / "runs/cond/unet/model.pt").is_file()
