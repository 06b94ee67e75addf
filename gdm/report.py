"""`gdm report`: side-by-side comparison of runs.

- `reports/summary.json`: one object per (variant, sampler, scale) with the metrics, the number of
  samples, the extractor and the MLflow run id; `summary.md` the same as a table;
- `reports/metrics.json`: the same rows flat and numeric (`"cond/ddim/scale2.0": {"fid": ..}`), what
  `dvc metrics show` / `dvc exp show` read (paths, names and run ids stay in summary.json);
- `reports/losses.png|csv`: every model's training loss curve overlaid (offline picture; the
  top-level `plots:` of dvc.yaml overlay the same curves in `dvc plots show`);
- `reports/tradeoff.png|csv`: FID vs IS and precision vs recall across guidance scales (the
  paper's Figure/Table 4 trade-off);
- `reports/ablation.json|md|png`: per architecture variant the parameter count, training
  images/s, sampling seconds per image, FID and delta FID vs the baseline (Table 1 weighs quality
  against wall-clock, so does this table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdm.config import Config
from gdm.errors import GdmError
from gdm.io import read_json, write_bytes, write_json
from gdm.pipeline import eval_file, sample_dir, scale_tag, unet_run

FIELDS = ("fid", "sfid", "is", "precision", "recall", "accuracy", "kid_mean")


def _read(path: str, what: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise GdmError(f"report: {what} missing: {p} (run the stage that writes it first)")
    return read_json(p)


def _info(path: str) -> dict[str, Any]:
    """What `gdm evaluate` wrote beside the numbers (runs/eval-info/): extractor, paths, MLflow run id."""
    from gdm.stages import info_path

    p = info_path(Path(path))
    return read_json(p) if p.is_file() else {}


def _sample_meta(cfg: Config, variant: str, sampler: str, scale: float, guidance: str = "classifier") -> dict[str, Any]:
    found = sorted(Path(sample_dir(cfg, variant, sampler, scale, guidance)).glob("*.json"))
    return read_json(found[0]) if found else {}


def summary_rows(cfg: Config) -> list[dict[str, Any]]:
    """One row per (variant, sampler, guidance kind, scale): classifier guidance for every model, then
    classifier-free guidance for the models in pipeline.free_guidance."""
    grid = [(v, "classifier") for v in cfg.pipeline.models] + [(v, "free") for v in cfg.pipeline.free_guidance]
    rows = []
    for v, kind in grid:
        for s in cfg.pipeline.samplers:
            for c in cfg.sample.scales:
                f = eval_file(cfg, v, s, c, guidance=kind)
                m = _read(f, f"evaluation of {v}/{s}/{kind} guidance/scale {c}")
                m = {**_info(f), **m}
                meta = _sample_meta(cfg, v, s, c, kind)
                rows.append({
                    "variant": v, "sampler": s, "steps": meta.get("steps"), "guidance": kind, "scale": float(c),
                    "num_samples": m.get("num_samples"), "num_reference": m.get("num_reference"),
                    **{k: m.get(k) for k in FIELDS}, "features": m.get("features"),
                    "seconds_per_image": meta.get("seconds_per_image"),
                    "mlflow_run_id": m.get("mlflow_run_id"),
                })
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out) + "\n"


def write_summary(cfg: Config) -> dict[str, Path]:
    from gdm.viz import save_tradeoff_plot

    rows = summary_rows(cfg)
    rdir = Path(cfg.pipeline.reports_dir)
    write_json(rdir / "summary.json", rows)
    write_json(rdir / "metrics.json", {row_key(r): flat_numbers(r, ("steps", "num_samples", *FIELDS)) for r in rows})
    losses = write_losses(cfg, list(cfg.pipeline.models), rdir / "losses")
    cols = ("variant", "sampler", "steps", "guidance", "scale", "num_samples", *FIELDS[:-1], "features")
    write_bytes(rdir / "summary.md", markdown_table(rows, cols).encode())
    keys = ("variant", "sampler", "guidance", "scale", "fid", "is", "precision", "recall", "accuracy")
    csv = [",".join(keys)] + [",".join(_fmt(r[k]) for k in keys) for r in rows]
    write_bytes(rdir / "tradeoff.csv", ("\n".join(csv) + "\n").encode())
    save_tradeoff_plot(rows, rdir / "tradeoff.png")
    return {"summary": rdir / "summary.json", "table": rdir / "summary.md", "plot": rdir / "tradeoff.png",
            "metrics": rdir / "metrics.json", **losses}


def row_key(r: dict[str, Any]) -> str:
    """`cond/ddim/scale2.0`: one summary row's name in the flat metrics file (classifier-free: `cfg/ddim/free2.0`)."""
    kind = "free" if r.get("guidance") == "free" else "scale"
    return f"{r['variant']}/{r['sampler']}/{kind}{scale_tag(r['scale'])}"


def flat_numbers(r: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float | int]:
    return {k: r[k] for k in keys if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)}


def write_losses(cfg: Config, variants: list[str], stem: Path) -> dict[str, Path]:
    """Training loss of every variant against step, overlaid: `<stem>.png` and `<stem>.csv` (long format)."""
    import csv
    import io

    from gdm.viz import save_line_plot

    series: dict[str, tuple[list[float], list[float]]] = {}
    for v in variants:
        f = Path(unet_run(cfg, v)) / "metrics.csv"
        if not f.is_file():
            continue
        with open(f, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("loss") not in (None, "")]
        series[v] = ([float(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
    if not series:
        return {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variant", "step", "loss"])
    for v, (xs, ys) in series.items():
        w.writerows([v, int(x), y] for x, y in zip(xs, ys))
    write_bytes(stem.with_suffix(".csv"), buf.getvalue().encode())
    png = save_line_plot(series, stem.with_suffix(".png"), "step", "training loss", "training loss by variant",
                         logy=True)
    return {"losses": png, "losses_csv": stem.with_suffix(".csv")}


def ablation_rows(cfg: Config) -> list[dict[str, Any]]:
    s = cfg.sample.sampler
    rows = []
    for a in cfg.pipeline.ablations:
        m = _read(eval_file(cfg, a, s, 0.0, ablation=True), f"evaluation of ablation {a}")
        m = {**_info(eval_file(cfg, a, s, 0.0, ablation=True)), **m}
        t = _read(f"{unet_run(cfg, a)}/metrics.json", f"training metrics of ablation {a}")
        meta = _sample_meta(cfg, a, s, 0.0)
        rows.append({"variant": a, "overrides": cfg.pipeline.ablations[a], "num_parameters": t.get("num_parameters"),
                     "train_images_per_s": t.get("images_per_s"), "final_loss": t.get("loss"),
                     "sample_seconds_per_image": meta.get("seconds_per_image"), "fid": m.get("fid"),
                     "sfid": m.get("sfid"), "precision": m.get("precision"), "recall": m.get("recall"),
                     "accuracy": m.get("accuracy"), "mlflow_run_id": m.get("mlflow_run_id")})
    base = next((r["fid"] for r in rows if r["variant"] == cfg.pipeline.baseline), None)
    for r in rows:
        r["delta_fid"] = None if base is None or r["fid"] is None else r["fid"] - base
    return rows


def write_ablation(cfg: Config) -> dict[str, Path]:
    from gdm.viz import save_ablation_plot

    rows = ablation_rows(cfg)
    rdir = Path(cfg.pipeline.reports_dir)
    write_json(rdir / "ablation.json", rows)
    write_json(rdir / "ablation_metrics.json", {r["variant"]: flat_numbers(r, ABLATION_NUMBERS) for r in rows})
    cols = ("variant", "num_parameters", "train_images_per_s", "sample_seconds_per_image", "fid", "delta_fid",
            "precision", "recall", "accuracy")
    write_bytes(rdir / "ablation.md", markdown_table(rows, cols).encode())
    save_ablation_plot(rows, rdir / "ablation.png", cfg.pipeline.baseline)
    losses = write_losses(cfg, list(cfg.pipeline.ablations), rdir / "ablation_losses")
    return {"ablation": rdir / "ablation.json", "table": rdir / "ablation.md", "plot": rdir / "ablation.png",
            "metrics": rdir / "ablation_metrics.json", **losses}


ABLATION_NUMBERS = ("num_parameters", "train_images_per_s", "final_loss", "sample_seconds_per_image", "fid", "sfid",
                    "precision", "recall", "accuracy", "delta_fid")
