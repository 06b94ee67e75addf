"""What a flow run shows in the Prefect UI's Artifacts tab: results as tables, pictures as images.

- `stages`: one row per stage (state, seconds, why it failed);
- `summary` / `ablation`: the report tables (markdown) and the same rows as a table artifact;
- `tradeoff`, `losses`, `ablation-plot` and the sample grids: image artifacts (PNG as a data URL,
  so they show with no file server; larger files become a link artifact with their path);
- `reevaluation`: the verdict table (model, version, alias, FID now/before, delta, within tolerance).
Keys are per project experiment, so the Artifacts page keeps each one's history across runs.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from gdm.config import Config
from gdm.io import read_json
from gdm.pipeline import Stage

INLINE_LIMIT = 512 << 10  # PNGs up to this size travel inside the artifact


def key(cfg: Config, what: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"gdm-{cfg.tracking.experiment}-{what}".lower()).strip("-")[:120]


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4)
    return v if isinstance(v, (int, str, bool)) or v is None else str(v)


def image(cfg: Config, path: str | Path, what: str, description: str) -> None:
    p = Path(path)
    if not p.is_file():
        return
    if p.stat().st_size <= INLINE_LIMIT:
        url = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()
        create_image_artifact(url, key=key(cfg, what), description=f"{description} ({p})")
    else:
        create_link_artifact(p.resolve().as_uri(), link_text=str(p), key=key(cfg, what), description=description)


def table(cfg: Config, rows: list[dict[str, Any]], what: str, description: str, columns: tuple[str, ...]) -> None:
    create_table_artifact([{c: _cell(r.get(c)) for c in columns} for r in rows], key=key(cfg, what),
                          description=description)


def publish_stages(cfg: Config, stages: list[Stage], run) -> None:
    rows = []
    for s in stages:
        r = run.results.get(s.name, {})
        rows.append({"stage": s.name, "state": run.states.get(s.name, "NotRun"),
                     "seconds": r.get("wall_seconds"), "error": run.failed.get(s.name, "")})
    table(cfg, rows, "stages", "pipeline stages of this run (Cached: answered from the task cache)",
          ("stage", "state", "seconds", "error"))


def publish_pipeline(cfg: Config, stages: list[Stage], run) -> None:
    """Stage table always; the report tables and pictures for whatever reports this run produced. A
    failure to publish is logged, never raised: the stages' results are already safe on disk."""
    from prefect import get_run_logger

    try:
        _publish_pipeline(cfg, stages, run)
    except Exception as exc:
        get_run_logger().warning(f"Prefect artifacts not (all) published: {type(exc).__name__}: {exc}")


def _publish_pipeline(cfg: Config, stages: list[Stage], run) -> None:
    from gdm.cli.pipeline_cmds import SUMMARY_COLUMNS
    from gdm.report import markdown_table

    publish_stages(cfg, stages, run)
    rdir = Path(cfg.pipeline.reports_dir)
    if "report" in run.results and (rdir / "summary.json").is_file():
        rows = read_json(rdir / "summary.json")
        create_markdown_artifact("## Guidance sweep\n\n" + markdown_table(rows, SUMMARY_COLUMNS),
                                 key=key(cfg, "summary"), description="FID, sFID, IS, precision, recall per "
                                                                       "variant, sampler and guidance scale")
        table(cfg, rows, "summary-table", "the summary rows (with MLflow run ids)", SUMMARY_COLUMNS + ("mlflow_run_id",))
        image(cfg, rdir / "tradeoff.png", "tradeoff", "FID vs IS and precision vs recall across guidance scales")
        image(cfg, rdir / "losses.png", "losses", "training loss of every model")
    if "ablation-report" in run.results and (rdir / "ablation.json").is_file():
        from gdm.cli.pipeline_cmds import ABLATION_COLUMNS

        rows = read_json(rdir / "ablation.json")
        create_markdown_artifact("## Architecture ablations\n\n" + markdown_table(rows, ABLATION_COLUMNS),
                                 key=key(cfg, "ablation"), description="ablation table (delta FID vs the baseline)")
        image(cfg, rdir / "ablation.png", "ablation-plot", "ablations: quality against cost")
    if "upsampling-report" in run.results and (rdir / "upsampling.md").is_file():
        create_markdown_artifact((rdir / "upsampling.md").read_text(), key=key(cfg, "upsampling"),
                                 description="upsampling study (Table 5 miniature): ADM, ADM-G, ADM-U, ADM-G + ADM-U")
    for name, r in run.results.items():
        if name.startswith("sample") and r.get("grid"):
            image(cfg, r["grid"], f"grid-{name}", f"samples of {name}")


VERDICT_COLUMNS = ("model", "version", "alias", "scale", "fid", "previous_fid", "delta_fid", "tolerance",
                   "within_tolerance", "verdict", "mlflow_run_id")


def publish_verdicts(cfg: Config, results: list[dict[str, Any]]) -> None:
    rows = [{**r, "within_tolerance": None if r.get("delta_fid") is None else not r["flagged"]} for r in results]
    table(cfg, rows, "reevaluation", "re-evaluation of the registered models (FID now vs the version's "
                                     "previous evaluation)", VERDICT_COLUMNS)
