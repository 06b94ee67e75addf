"""`ablation` flow: the paper's architecture ablations as one concurrent DAG.

Each variant (pipeline.ablations, on top of pipeline.ablation_base) is trained, sampled unguided
and scored as its own chain of stages; the chains run concurrently on `pipeline.task_runner`
within the host's resources (flows/dag.py). Then the ablation table compares them.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

import flows  # noqa: F401
from flows.pipeline import run_stages
from gdm import stages as st
from gdm.config import load_config
from gdm.errors import ConfigError


@flow(name="gdm-ablation", log_prints=True)
def ablation(params: str = "params.yaml", overrides: list[str] | None = None,
             variants: list[str] | None = None, progress: bool = False) -> dict[str, Any]:
    cfg = load_config(params, overrides or [])
    chosen = list(variants or cfg.pipeline.ablations)
    unknown = sorted(set(chosen) - set(cfg.pipeline.ablations))
    if unknown:
        raise ConfigError(f"ablation: unknown variants {unknown}; pipeline.ablations has {sorted(cfg.pipeline.ablations)}")
    if cfg.pipeline.baseline not in chosen:
        chosen.insert(0, cfg.pipeline.baseline)
    names = {"prepare", "train-evaluator"} | {f"{k}@{v}" for v in chosen
                                              for k in ("train-ablation", "sample-ablation", "evaluate-ablation")}
    if set(chosen) == set(cfg.pipeline.ablations):
        names.add("ablation-report")
    with st.tracked(cfg, "ablation", "ablation") as parent:
        parent.log_params(cfg.flat())
        done = run_stages(cfg, sorted(names), parent.id, progress, ablations=True)
    results: dict[str, Any] = {v: done[f"evaluate-ablation@{v}"] for v in chosen}
    if "ablation-report" in done:
        results["ablation-report"] = done["ablation-report"]
    return results


if __name__ == "__main__":
    ablation()
