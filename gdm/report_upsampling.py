"""`gdm report --upsampling`: the paper's Table 5 in miniature (reports/upsampling.json|md).

For every model of `pipeline.upsampling_models` and sampler, four rows, all scored at the full
resolution against the same reference:
- ADM: the model sampled directly at full resolution, unguided (evaluate@<m>-<s>-0.0);
- ADM-G: the same, classifier-guided at its best scale (lowest FID over sample.scales > 0);
- ADM-U: the low-resolution model sampled unguided, then upsampled (evaluate-up@<m>-<s>-0.0);
- ADM-G + ADM-U: the low-resolution model guided by the low-resolution classifier at its best scale,
  then upsampled.
`sweep` in the JSON holds every scale of both paths (the best-scale choice is visible).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdm.config import Config
from gdm.io import write_bytes, write_json
from gdm.pipeline import eval_file, eval_up_file
from gdm.report import FIELDS, _read, flat_numbers, markdown_table

ROWS = ("ADM", "ADM-G", "ADM-U", "ADM-G + ADM-U")
# ADM.md section 6 (ImageNet, FID): what the digits miniature mirrors.
PAPER = {"256": {"ADM-G": 4.59, "ADM-G + ADM-U": 3.94}, "512": {"ADM-G": 7.72, "ADM-G + ADM-U": 3.85}}


def _metrics(path: str, what: str, row: str, model: str, sampler: str, scale: float, base: int, res: int):
    m = _read(path, what)
    return {"row": row, "model": model, "sampler": sampler, "scale": float(scale), "base_resolution": base,
            "resolution": res, "num_samples": m.get("num_samples"), **{k: m.get(k) for k in FIELDS},
            "features": m.get("features"), "mlflow_run_id": m.get("mlflow_run_id"), "eval_file": path}


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    guided = [r for r in rows if r["scale"] > 0 and r.get("fid") is not None]
    return min(guided, key=lambda r: r["fid"]) if guided else None


def upsampling_rows(cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Table-5 rows, the full sweep) for every model and sampler of the upsampling study."""
    res, low = cfg.resolution("upsampler_train"), cfg.low_resolution()
    table, sweep = [], []
    for m in cfg.pipeline.upsampling_models:
        for s in cfg.pipeline.samplers:
            direct = [_metrics(eval_file(cfg, m, s, c), f"evaluation of {m}/{s}/scale {c}", "ADM-G" if c else "ADM",
                               m, s, c, res, res) for c in cfg.sample.scales]
            up = [_metrics(eval_up_file(cfg, m, s, c), f"evaluation of the upsampled {m}/{s}/scale {c}",
                           "ADM-G + ADM-U" if c else "ADM-U", m, s, c, low, res) for c in cfg.sample.scales]
            sweep += direct + up
            for path_rows in (direct, up):
                unguided = next((r for r in path_rows if r["scale"] == 0), None)
                table += [r for r in (unguided, _best(path_rows)) if r is not None]
    return table, sweep


def write_upsampling(cfg: Config) -> dict[str, Path]:
    table, sweep = upsampling_rows(cfg)
    rdir = Path(cfg.pipeline.reports_dir)
    write_json(rdir / "upsampling.json", {"table5": table, "sweep": sweep, "paper_imagenet_fid": PAPER,
                                          "best_scale_by": "lowest FID over sample.scales > 0"})
    cols = ("row", "model", "sampler", "base_resolution", "resolution", "scale", "num_samples", *FIELDS[:-1],
            "features")
    text = ["# Upsampling study (the paper's Table 5, in miniature)\n",
            (f"Base models at {cfg.low_resolution()}x{cfg.low_resolution()} upsampled by ADM-U vs direct "
             f"{cfg.resolution('upsampler_train')}x{cfg.resolution('upsampler_train')} models; guided rows at "
             "their best scale (lowest FID). All rows scored at full resolution against the same reference.\n"),
            markdown_table(table, cols),
            "\nEvery scale:\n", markdown_table(sweep, cols),
            ("\nPaper (ImageNet FID): 256x256 ADM-G 4.59 vs ADM-G + ADM-U 3.94; 512x512 ADM-G 7.72 vs "
             "ADM-G + ADM-U 3.85.\n")]
    write_bytes(rdir / "upsampling.md", "\n".join(text).encode())
    # DVC's metrics: numbers only, one entry per Table-5 row (`cond/ddim/adm_g_adm_u`: fid, ..., scale)
    write_json(rdir / "upsampling_metrics.json", {
        f"{r['model']}/{r['sampler']}/{_row_name(r)}": flat_numbers(r, ("scale", "base_resolution", "resolution",
                                                                        "num_samples", *FIELDS)) for r in table})
    return {"upsampling": rdir / "upsampling.json", "table": rdir / "upsampling.md",
            "metrics": rdir / "upsampling_metrics.json"}


def _row_name(r: dict[str, Any]) -> str:
    return r["row"].lower().replace(" + ", "_").replace("-", "_")


def table_metrics(table: list[dict[str, Any]]) -> dict[str, float]:
    """Flat metric names for MLflow (`adm_g_adm_u_ddim_fid`, `adm_g_adm_u_ddim_scale`, ...)."""
    out: dict[str, float] = {}
    for r in table:
        key = _row_name(r)
        prefix = f"{r['model']}_{key}_{r['sampler']}"
        for k in ("fid", "sfid", "is", "precision", "recall", "accuracy", "scale"):
            if isinstance(r.get(k), (int, float)):
                out[f"{prefix}_{k}"] = float(r[k])
    return out
