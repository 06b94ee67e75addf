"""Prefect deployments of the gdm flows.

- `gdm-pipeline/manual`: the whole study on demand;
- `gdm-ablation/gpu`: the ablations sent to a work pool (`gpu` by default) so a GPU host's worker
  runs them (`prefect work-pool create gpu --type process`, then on the GPU box
  `prefect worker start --pool gpu`);
- `gdm-reevaluate/nightly`: scheduled re-evaluation of the registered models (cron).

`python -m flows.deploy` serves the local deployments from this process (needs a Prefect server:
`prefect server start`, and PREFECT_API_URL pointing at it); `prefect deploy --all` (prefect.yaml)
registers the work-pool ones.
"""

from __future__ import annotations

import os

import flows  # noqa: F401
from flows.ablation import ablation
from flows.pipeline import pipeline
from flows.reevaluate import reevaluate

REEVALUATE_CRON = os.environ.get("GDM_REEVALUATE_CRON", "0 3 * * *")
GPU_POOL = os.environ.get("GDM_GPU_POOL", "gpu")


def local_deployments() -> list:
    """Deployments served from this process (`flow.serve`-style); built offline, no server needed."""
    return [
        pipeline.to_deployment(name="manual", tags=["gdm"], description="ADM study on demand"),
        reevaluate.to_deployment(name="nightly", cron=REEVALUATE_CRON, tags=["gdm", "scheduled"],
                                 description="re-score registered models under the configured alias"),
    ]


def pool_deployments() -> list:
    """Deployments for a work pool (runs go to whichever host runs a worker of that pool)."""
    return [
        ablation.to_deployment(name="gpu", work_pool_name=GPU_POOL, tags=["gdm", "gpu"],
                               parameters={"params": "params.yaml"}, description="architecture ablations"),
    ]


def main() -> None:
    from prefect import serve

    serve(*local_deployments())


if __name__ == "__main__":
    main()
