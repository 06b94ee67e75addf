"""`pipeline` flow: every stage of the ADM study as Prefect tasks, in DAG order.

Run it with `python -m flows.pipeline` (what `make demo` does) or as a deployment (flows/deploy.py).
A rerun skips stages whose input content hashes are unchanged (Prefect's task cache).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from prefect import flow

import flows  # noqa: F401  (Prefect defaults)
from flows.tasks import stage_task
from gdm import stages as st
from gdm.config import load_config
from gdm.pipeline import stage_graph


def run_stages(cfg, names: list[str] | None, parent_run_id: str | None, progress: bool,
               ablations: bool) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for stage in stage_graph(cfg, ablations=ablations):
        if names is not None and stage.name not in names:
            continue
        t0 = time.perf_counter()
        results[stage.name] = stage_task(cfg, stage)(stage.name, cfg.to_dict(), parent_run_id, progress)
        results[stage.name]["flow_seconds"] = time.perf_counter() - t0  # ~0 when the cache answered
    return results


@flow(name="gdm-pipeline", log_prints=True)
def pipeline(params: str = "params.yaml", overrides: list[str] | None = None, ablations: bool = False,
             progress: bool = True) -> dict[str, dict[str, Any]]:
    """prepare -> train (models) -> train-classifier -> train-evaluator -> sample -> evaluate -> report."""
    cfg = load_config(params, overrides or [])
    with st.tracked(cfg, "pipeline", "pipeline") as parent:
        parent.log_params(cfg.flat())
        return run_stages(cfg, None, parent.id, progress, ablations)


def record_in_dvc(names: list[str]) -> bool:
    """Record the stages this flow produced in dvc.lock (`dvc commit`), so `dvc repro` afterwards
    finds them up to date. Only meaningful when the flow ran on params.yaml as it is (no overrides)."""
    import shutil
    import subprocess
    from pathlib import Path

    dvc = shutil.which("dvc")
    if not dvc or not Path(".dvc").is_dir() or not Path("dvc.yaml").is_file():
        return False
    done = subprocess.run([dvc, "commit", "--force", "--quiet", *names], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"note: dvc commit failed ({done.stderr.strip()[:300]}); `dvc repro` will rerun these stages")
    return done.returncode == 0


def main(argv: list[str] | None = None) -> None:
    from gdm.cli.pipeline_cmds import print_rows
    from gdm.errors import GdmError
    from gdm.io import read_json

    args = list(sys.argv[1:] if argv is None else argv)
    overrides = [a.split("=", 1)[1] for a in args if a.startswith("--set=")]
    t0 = time.perf_counter()
    try:
        results = pipeline(overrides=overrides, ablations="--ablations" in args)
    except GdmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    cfg = load_config("params.yaml", overrides)
    if not overrides and record_in_dvc(list(results)):
        print("recorded in dvc.lock: `dvc repro` now finds these stages up to date")
    print_rows(read_json(f"{cfg.pipeline.reports_dir}/summary.json"))
    print("\nwall time per stage (s; ~0 = reused from the cache):")
    for name, r in results.items():
        print(f"  {name:28s} {r['flow_seconds']:8.1f}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    print(f"grids: {cfg.pipeline.runs_dir}/<variant>/samples/*/*.png   plots: {cfg.pipeline.reports_dir}/tradeoff.png")
    print("MLflow UI: mlflow ui --backend-store-uri sqlite:///mlflow.db")


if __name__ == "__main__":
    main()
