"""`reevaluate` flow: re-score the registered models under an alias (scheduled by flows/deploy.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

import flows  # noqa: F401
from gdm import stages as st
from gdm.config import load_config
from gdm.reevaluate import reevaluate_variant


@task(name="gdm-reevaluate", task_run_name="reevaluate@{variant}", retries=1, retry_delay_seconds=5)
def reevaluate_task(config: dict, variant: str, workdir: str, alias: str | None, scale: float,
                    parent_run_id: str | None) -> dict[str, Any]:
    from gdm.config import Config

    return reevaluate_variant(Config.model_validate(config), variant, workdir, alias=alias, scale=scale,
                              parent_run_id=parent_run_id)


@flow(name="gdm-reevaluate", log_prints=True)
def reevaluate(params: str = "params.yaml", overrides: list[str] | None = None,
               variants: list[str] | None = None, alias: str | None = None,
               scale: float = 0.0) -> list[dict[str, Any]]:
    cfg = load_config(params, overrides or [])
    if st.dataset_hash(cfg) is None:
        st.prepare(cfg, progress=False)
    out = []
    with st.tracked(cfg, "reevaluate", "reevaluate") as parent:
        for v in variants or list(cfg.pipeline.models):
            workdir = Path(cfg.pipeline.runs_dir) / "reevaluate" / v
            r = reevaluate_task(cfg.to_dict(), v, str(workdir), alias, scale, parent.id)
            flag = "CHANGED beyond tolerance" if r["flagged"] else "within tolerance"
            print(f"{r['model']} v{r['version']} @{r['alias']}: FID {r['fid']:.4g} "
                  f"(previous {r['previous_fid']}, delta {r['delta_fid']}) {flag}")
            out.append(r)
    return out


if __name__ == "__main__":
    reevaluate()
