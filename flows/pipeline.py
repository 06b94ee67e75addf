"""`pipeline` flow: every stage of the ADM study as Prefect tasks, run as a concurrent DAG.

Run it with `python -m flows.pipeline` (what `make demo` does) or as a deployment (flows/deploy.py,
prefect.yaml). Independent stages run at the same time on `pipeline.task_runner` (flows/dag.py); a
rerun skips stages whose input content hashes are unchanged (Prefect's task cache). Every run
publishes its results as Prefect artifacts (flows/artifacts.py).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from prefect import flow, get_run_logger

import flows  # noqa: F401  (Prefect defaults)
from flows.artifacts import publish_pipeline
from flows.dag import run_dag
from gdm import stages as st
from gdm.config import load_config
from gdm.pipeline import stage_graph


def run_stages(cfg, names: list[str] | None, parent_run_id: str | None, progress: bool,
               ablations: bool, upsampling: bool = False) -> dict[str, dict[str, Any]]:
    """Run the chosen stages (all when `names` is None) as a DAG; raise `StageFailures` after the
    independent branches finished when any stage failed. `upsampling`: include the ADM-U study's stages."""
    stages = [s for s in stage_graph(cfg, ablations=ablations, upsampling=upsampling)
              if names is None or s.name in names]
    t0 = time.perf_counter()
    run = run_dag(cfg, stages, parent_run_id, progress)
    logger = get_run_logger()
    logger.info(f"{len(stages)} stages in {time.perf_counter() - t0:.1f} s on the {cfg.pipeline.task_runner} runner: "
                + ", ".join(f"{sum(v == k for v in run.states.values())} {k.lower()}"
                            for k in ("Completed", "Cached", "Failed", "NotRun") if k in run.states.values()))
    publish_pipeline(cfg, stages, run)
    run.raise_on_failure()
    for name, r in run.results.items():
        r["state"] = run.states[name]
    return run.results


@flow(name="gdm-pipeline", log_prints=True)
def pipeline(params: str = "params.yaml", overrides: list[str] | None = None, ablations: bool = False,
             progress: bool = True, upsampling: bool = False) -> dict[str, dict[str, Any]]:
    """prepare -> train (models) | train-classifier | train-evaluator -> sample -> evaluate -> report;
    with `upsampling` also the ADM-U study (low-res models, upsampler, two-stage samples, upsampling-report)."""
    cfg = load_config(params, overrides or [])
    with st.tracked(cfg, "pipeline", "pipeline") as parent:
        parent.log_params(cfg.flat())
        return run_stages(cfg, None, parent.id, progress, ablations, upsampling)


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
        results = pipeline(overrides=overrides, ablations="--ablations" in args, upsampling="--upsampling" in args)
    except GdmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    wall = time.perf_counter() - t0
    cfg = load_config("params.yaml", overrides)
    if not overrides and record_in_dvc(list(results)):
        print("recorded in dvc.lock: `dvc repro` now finds these stages up to date")
    print_rows(read_json(f"{cfg.pipeline.reports_dir}/summary.json"))
    if "upsampling-report" in results:
        from gdm.cli.pipeline_cmds import print_upsampling

        print_upsampling(read_json(f"{cfg.pipeline.reports_dir}/upsampling.json")["table5"])
    print("\nwall time per stage (s, inside the stage; 'cached' = answered from the cache):")
    for name, r in results.items():
        print(f"  {name:28s} {r.get('wall_seconds', 0.0):8.1f}  {'cached' if r.get('state') == 'Cached' else ''}")
    print(f"total {wall:.1f} s ({cfg.pipeline.task_runner} runner, max_parallel {cfg.pipeline.max_parallel or 'auto'})")
    print(f"grids: {cfg.pipeline.runs_dir}/<variant>/samples/*/*.png   plots: {cfg.pipeline.reports_dir}/tradeoff.png")
    print("MLflow UI: mlflow ui --backend-store-uri sqlite:///mlflow.db")


if __name__ == "__main__":
    main()
