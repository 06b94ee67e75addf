"""`gdm-stage` flow: one pipeline stage as its own flow run, for work-pool dispatch.

With `pipeline.dispatch: deployments` the pipeline flow sends every heavy stage (training, sampling)
to the `gdm-stage/stage` deployment (`pipeline.stage_deployment`) with `run_deployment`: whichever
worker of that deployment's pool picks the run trains there, so one pipeline run spreads its
training stages over several GPU hosts. Inputs and outputs travel through shared storage: every
path of the pipeline (data.out_dir, pipeline.runs_dir, pipeline.reports_dir) must be the same
shared filesystem on the orchestrating host and on every worker (NFS, EFS, a Lustre mount), and the
MLflow tracking URI must be a server every host reaches. Both sides check: the stage flow refuses
to start when it cannot see its inputs, and the pipeline refuses to go on when it cannot see what
the stage wrote.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

import flows  # noqa: F401
from flows.tasks import _cache_key, find_stage, run_stage
from gdm.config import Config
from gdm.errors import GdmError
from gdm.pipeline import outputs_exist, path_exists

SHARED = ("every host must see the same pipeline paths (a shared filesystem mounted at the same path: "
          "data.out_dir, pipeline.runs_dir, pipeline.reports_dir) and one MLflow tracking server")


def _missing(paths) -> list[str]:
    return [p for p in paths if not path_exists(p)]


@flow(name="gdm-stage", flow_run_name="{stage_name}", log_prints=True)
def stage(stage_name: str, config: dict[str, Any], parent_run_id: str | None = None) -> dict[str, Any]:
    """Run one stage of the pipeline here (a work-pool worker), cached like the pipeline's own tasks."""
    cfg = Config.model_validate(config)
    s = find_stage(cfg, stage_name)
    missing = _missing(s.deps)
    if missing:
        raise GdmError(f"{stage_name}: worker on {socket.gethostname()} (cwd {Path.cwd()}) cannot see its inputs "
                       f"{missing}; {SHARED}")
    get_run_logger().info(f"{stage_name}: running on {socket.gethostname()} in {Path.cwd()}")
    return run_stage.with_options(refresh_cache=not outputs_exist(s))(
        stage_name, config, parent_run_id, progress=False, limits=False, own_threads=True)


@task(name="gdm-dispatch", task_run_name="{stage_name}", cache_key_fn=_cache_key, persist_result=True)
def dispatch(stage_name: str, config: dict[str, Any], parent_run_id: str | None = None) -> dict[str, Any]:
    """Run `stage_name` as a flow run of the stage deployment and wait for it (a subflow in the UI)."""
    from prefect.deployments import run_deployment

    cfg = Config.model_validate(config)
    name = cfg.pipeline.stage_deployment
    fr = run_deployment(name=name, parameters={"stage_name": stage_name, "config": config,
                                               "parent_run_id": parent_run_id},
                        flow_run_name=stage_name, as_subflow=True)
    if not fr.state or not fr.state.is_completed():
        raise GdmError(f"{stage_name}: flow run {fr.name} of deployment {name} ended "
                       f"{fr.state.name if fr.state else 'without a state'}: {fr.state.message if fr.state else ''}")
    s = find_stage(cfg, stage_name)
    missing = _missing(s.outs + s.metrics)
    if missing:
        raise GdmError(f"{stage_name}: the worker finished but {missing} are not visible on {socket.gethostname()}; "
                       f"{SHARED}")
    return {"flow_run": str(fr.id), "flow_run_name": fr.name}


def dispatch_task(s):
    """`dispatch` answered from the cache (same input hash) unless the stage's outputs are missing here."""
    return dispatch.with_options(refresh_cache=not outputs_exist(s))


if __name__ == "__main__":
    import sys

    print("gdm-stage runs from a deployment (prefect.yaml); see flows/pipeline.py", file=sys.stderr)
