"""One Prefect task that runs any stage of `gdm.pipeline.stage_graph`, cached on input content hashes.

The cache key is the content hash of the stage's command, params slice and dependency files
(`gdm.pipeline.input_hash`); a stage whose outputs are missing is re-run whatever the cache says.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import task

from gdm import stages as st
from gdm.config import Config
from gdm.pipeline import Stage, eval_file, input_hash, outputs_exist, sample_dir, stage_graph

RETRIES = {"prepare": 1, "train": 1, "train-classifier": 1, "train-evaluator": 1, "sample": 1, "evaluate": 1}


def find_stage(cfg: Config, name: str, ablations: bool = True) -> Stage:
    for s in stage_graph(cfg, ablations=ablations):
        if s.name == name:
            return s
    raise KeyError(f"no stage named {name!r} in the pipeline")


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    cfg = Config.model_validate(parameters["config"])
    return f"{parameters['stage_name']}-{input_hash(cfg, find_stage(cfg, parameters['stage_name']))}"


def execute(cfg: Config, stage: Stage, parent_run_id: str | None, progress: bool) -> dict[str, Any]:
    """Run one stage through the same `gdm.stages` function the CLI (and so DVC) calls."""
    a = stage.args
    if stage.kind == "prepare":
        return {"dataset": str(st.prepare(cfg, progress=progress))}
    if stage.kind == "train":
        return st.train(cfg, a["variant"], progress=progress, restart_on_mismatch=True, parent_run_id=parent_run_id)
    if stage.kind == "train-classifier":
        return st.train_classifier(cfg, progress=progress, restart_on_mismatch=True, parent_run_id=parent_run_id)
    if stage.kind == "train-evaluator":
        return st.train_evaluator(cfg, progress=progress, parent_run_id=parent_run_id)
    if stage.kind == "sample":
        scfg = cfg.with_overrides({"sample.sampler": a["sampler"]})
        out = sample_dir(cfg, a["variant"], a["sampler"], a["scale"])
        run = st.sample(scfg, a["variant"], a["scale"], out=out, progress=progress, parent_run_id=parent_run_id)
        return {"npz": str(run.npz), "grid": str(run.grid)}
    if stage.kind == "evaluate":
        ablation = stage.name.startswith("evaluate-ablation")
        out = eval_file(cfg, a["variant"], a["sampler"], a["scale"], ablation)
        m = st.evaluate(cfg, sample_dir(cfg, a["variant"], a["sampler"], a["scale"]), out=out,
                        parent_run_id=parent_run_id)
        return {k: v for k, v in m.items() if k != "warnings"}
    if stage.kind in ("report", "ablation-report"):
        written = st.report(cfg, ablations=stage.kind == "ablation-report", parent_run_id=parent_run_id)
        return {k: str(v) for k, v in written.items()}
    raise ValueError(f"unknown stage kind {stage.kind!r}")


@task(name="gdm-stage", task_run_name="{stage_name}", cache_key_fn=_cache_key, persist_result=True)
def run_stage(stage_name: str, config: dict[str, Any], parent_run_id: str | None = None,
              progress: bool = True) -> dict[str, Any]:
    cfg = Config.model_validate(config)
    t0 = time.perf_counter()
    result = execute(cfg, find_stage(cfg, stage_name), parent_run_id, progress)
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def stage_task(cfg: Config, stage: Stage):
    """`run_stage` with this stage's retries, forced to re-run when its outputs are missing."""
    return run_stage.with_options(retries=RETRIES.get(stage.kind, 0), retry_delay_seconds=2,
                                  refresh_cache=not outputs_exist(stage))
