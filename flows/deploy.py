"""Prefect deployments of the gdm flows.

Served from one process (`python -m flows.deploy`; needs PREFECT_API_URL of a running server):
- `gdm-pipeline/manual`: the whole study on demand;
- `gdm-reevaluate/nightly`: scheduled re-evaluation of the registered models (cron GDM_REEVALUATE_CRON).

On work pools (`prefect.yaml`, registered with `python -m flows.deploy --pools` or `prefect deploy --all`;
names end in `-pool` so they never take over a served deployment):
- `gdm-pipeline/pipeline-pool`, `gdm-ablation/ablation-pool`, `gdm-reevaluate/nightly-pool` on GDM_GPU_POOL;
- `gdm-stage/stage` on GDM_STAGE_POOL: one pipeline stage per flow run (`pipeline.dispatch: deployments`).

Knobs (environment): GDM_GPU_POOL (default gpu), GDM_STAGE_POOL (default: GDM_GPU_POOL),
GDM_REEVALUATE_CRON (default "0 3 * * *"); on a worker host GDM_REPO (default: the directory the worker
was started in) is the checkout the runs execute in (flows/steps.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

import flows  # noqa: F401
from flows.pipeline import pipeline
from flows.reevaluate import reevaluate

DEFAULTS = {"GDM_GPU_POOL": "gpu", "GDM_REEVALUATE_CRON": "0 3 * * *"}


def knobs(env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    out = {k: env.get(k) or v for k, v in DEFAULTS.items()}
    out["GDM_STAGE_POOL"] = env.get("GDM_STAGE_POOL") or out["GDM_GPU_POOL"]
    return out


def local_deployments() -> list:
    """Deployments served from this process (`flow.serve`-style); built offline, no server needed."""
    cron = knobs()["GDM_REEVALUATE_CRON"]
    return [
        pipeline.to_deployment(name="manual", tags=["gdm"], description="ADM study on demand"),
        reevaluate.to_deployment(name="nightly", cron=cron, tags=["gdm", "scheduled"],
                                 description="re-score registered models under the configured alias"),
    ]


def pool_config(path: str | Path = "prefect.yaml", env: dict[str, str] | None = None) -> dict[str, Any]:
    """prefect.yaml with the GDM_* knobs applied: pools of every deployment, the nightly cron."""
    doc = yaml.safe_load(Path(path).read_text())
    k = knobs(env)
    for d in doc["deployments"]:
        d["work_pool"]["name"] = k["GDM_STAGE_POOL"] if d["name"] == "stage" else k["GDM_GPU_POOL"]
        for sched in d.get("schedules") or []:
            if "cron" in sched:
                sched["cron"] = k["GDM_REEVALUATE_CRON"]
    return doc


def register_pools(path: str | Path = "prefect.yaml", extra: list[str] | None = None) -> int:
    """`prefect deploy --all` on prefect.yaml with the knobs applied (a resolved copy under .prefect/),
    run from the checkout in the working directory (where the entrypoints flows/*.py are)."""
    root = Path.cwd()
    resolved = root / ".prefect" / "prefect.resolved.yaml"
    resolved.parent.mkdir(parents=True, exist_ok=True)
    resolved.write_text(yaml.safe_dump(pool_config(root / path), sort_keys=False))
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect) if prefect.exists() else "prefect", "--no-prompt", "deploy", "--all",
           "--prefect-file", str(resolved), *(extra or [])]
    return subprocess.run(cmd, cwd=root, check=False).returncode


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--pools" in args:
        sys.exit(register_pools(extra=[a for a in args if a != "--pools"]))
    from prefect import serve

    serve(*local_deployments())


if __name__ == "__main__":
    main()
