"""`reevaluate` flow: re-score the registered models under an alias (scheduled by flows/deploy.py).

Every run leaves its result where it is looked for: INFO log lines, a `reevaluation` table artifact
(model, version, alias, FID now and before, delta, within tolerance), metrics and tags on the new
MLflow evaluation run and `gdm.reevaluate.*` tags on the model version. A drift beyond
`tracking.reevaluate_tolerance` fails the flow run (`fail_on_drift`), so a scheduled run's verdict
shows as a Failed run in the UI and can trigger a Prefect automation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

import flows  # noqa: F401
from flows.artifacts import publish_verdicts
from gdm import stages as st
from gdm.config import load_config
from gdm.errors import GdmError
from gdm.reevaluate import reevaluate_variant


class DriftDetected(GdmError):
    """A registered model's FID moved beyond tracking.reevaluate_tolerance."""


@task(name="gdm-reevaluate", task_run_name="reevaluate@{variant}", retries=1, retry_delay_seconds=5)
def reevaluate_task(config: dict, variant: str, workdir: str, alias: str | None, scale: float,
                    parent_run_id: str | None) -> dict[str, Any]:
    from gdm.config import Config

    return reevaluate_variant(Config.model_validate(config), variant, workdir, alias=alias, scale=scale,
                              parent_run_id=parent_run_id)


@flow(name="gdm-reevaluate", log_prints=True)
def reevaluate(params: str = "params.yaml", overrides: list[str] | None = None,
               variants: list[str] | None = None, alias: str | None = None,
               scale: float = 0.0, fail_on_drift: bool = True) -> list[dict[str, Any]]:
    cfg = load_config(params, overrides or [])
    logger = get_run_logger()
    if st.dataset_hash(cfg) is None:
        st.prepare(cfg, progress=False)
    out = []
    with st.tracked(cfg, "reevaluate", "reevaluate") as parent:
        for v in variants or list(cfg.pipeline.models):
            workdir = Path(cfg.pipeline.runs_dir) / "reevaluate" / v
            r = reevaluate_task(cfg.to_dict(), v, str(workdir), alias, scale, parent.id)
            delta = "n/a (first evaluation)" if r["delta_fid"] is None else f"{r['delta_fid']:+.4g}"
            logger.info(f"{r['model']} v{r['version']} @{r['alias']}: FID {r['fid']:.4g} "
                        f"(previous {r['previous_fid']}, delta {delta}, tolerance {r['tolerance']:g}): {r['verdict']}")
            out.append(r)
    publish_verdicts(cfg, out)
    drifted = [r for r in out if r["flagged"]]
    if drifted and fail_on_drift:
        raise DriftDetected("; ".join(f"{r['model']} v{r['version']} FID {r['previous_fid']:.4g} -> {r['fid']:.4g} "
                                      f"(delta {r['delta_fid']:+.4g} > tolerance {r['tolerance']:g})" for r in drifted))
    return out


if __name__ == "__main__":
    reevaluate()
