"""`ablation` flow: the paper's architecture ablations fanned out over a task runner.

Each variant (pipeline.ablations, on top of pipeline.ablation_base) is trained, sampled unguided
and scored as its own chain of tasks; the chains run concurrently up to `max_workers` (keep 1 on
a small CPU box; raise it on a multi-GPU host). Then the ablation table compares them.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

import flows  # noqa: F401
from flows.tasks import stage_task
from gdm import stages as st
from gdm.config import load_config
from gdm.errors import ConfigError
from gdm.pipeline import stage_graph


@flow(name="gdm-ablation", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def ablation(params: str = "params.yaml", overrides: list[str] | None = None,
             variants: list[str] | None = None, progress: bool = False) -> dict[str, Any]:
    cfg = load_config(params, overrides or [])
    chosen = list(variants or cfg.pipeline.ablations)
    unknown = sorted(set(chosen) - set(cfg.pipeline.ablations))
    if unknown:
        raise ConfigError(f"ablation: unknown variants {unknown}; pipeline.ablations has {sorted(cfg.pipeline.ablations)}")
    if cfg.pipeline.baseline not in chosen:
        chosen.insert(0, cfg.pipeline.baseline)
    graph = {s.name: s for s in stage_graph(cfg)}
    with st.tracked(cfg, "ablation", "ablation") as parent:
        parent.log_params(cfg.flat())
        cfg_dict = cfg.to_dict()

        def run(name: str, wait_for=None):
            return stage_task(cfg, graph[name]).submit(name, cfg_dict, parent.id, progress, wait_for=wait_for or [])

        prep = run("prepare")
        prep.wait()
        evaluator = run("train-evaluator", [prep])
        finals = []
        for v in chosen:
            trained = run(f"train-ablation@{v}", [prep])
            sampled = run(f"sample-ablation@{v}", [trained])
            finals.append(run(f"evaluate-ablation@{v}", [sampled, evaluator]))
        results = {v: f.result() for v, f in zip(chosen, finals)}
        if set(chosen) == set(cfg.pipeline.ablations):
            results["ablation-report"] = run("ablation-report", finals).result()
        return results


if __name__ == "__main__":
    ablation()
