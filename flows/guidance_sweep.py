"""`guidance_sweep` flow: guidance scales x samplers for one trained model pair (UNet + classifier)."""

from __future__ import annotations

from typing import Any

from prefect import flow

import flows  # noqa: F401
from flows.pipeline import run_stages
from gdm import stages as st
from gdm.config import load_config
from gdm.pipeline import scale_tag, stage_graph


@flow(name="gdm-guidance-sweep", log_prints=True)
def guidance_sweep(params: str = "params.yaml", overrides: list[str] | None = None, variant: str = "cond",
                   scales: list[float] | None = None, samplers: list[str] | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Sample and score `variant` at every (sampler, scale); trains what is missing (cached otherwise)."""
    over = list(overrides or [])
    if scales:
        over.append(f"sample.scales=[{', '.join(scale_tag(s) for s in scales)}]")
    if samplers:
        over.append(f"pipeline.samplers=[{', '.join(samplers)}]")
    cfg = load_config(params, over)
    # the variant's main-pipeline stages and what they read, named as the DAG names them
    wanted = {"prepare", "train-classifier", "train-evaluator"} | {
        s.name for s in stage_graph(cfg, ablations=False, upsampling=False)
        if s.args.get("variant") == variant and s.kind in ("train", "sample", "evaluate")}
    with st.tracked(cfg, "guidance-sweep", f"guidance-sweep@{variant}") as parent:
        parent.log_params({"gdm.variant": variant, "sample.scales": list(cfg.sample.scales),
                           "pipeline.samplers": list(cfg.pipeline.samplers)})
        return run_stages(cfg, sorted(wanted), parent.id, progress, ablations=False)


if __name__ == "__main__":
    guidance_sweep()
