"""Scheduled re-evaluation: score the registered models under an alias again, and report drift.

Loads `gdm-unet-<variant>@<alias>` (and the classifier under the same alias when guided) from the
MLflow model registry, samples with the current `sample` settings, scores against the current
reference features and evaluator, logs a new evaluation run tagged `gdm.evaluates=<name>:<version>`
(linking it to the model version), and compares FID with that version's previous evaluation,
flagging a change larger than `tracking.reevaluate_tolerance`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdm import stages
from gdm.config import Config
from gdm.errors import GdmError
from gdm.tracking import evaluates_tag, latest_evaluation, record_verdict, resolve_alias


def _checkpoint(artifact_dir: str, name: str) -> Path:
    """The checkpoint inside a downloaded model version: pyfunc folders keep it under artifacts/."""
    for candidate in (Path(artifact_dir) / "artifacts" / name, Path(artifact_dir) / name):
        if candidate.is_file():
            return candidate
    raise GdmError(f"reevaluate: model version folder {artifact_dir} holds no {name}")


def reevaluate_variant(cfg: Config, variant: str, workdir: str | Path, *, alias: str | None = None,
                       scale: float = 0.0, parent_run_id: str | None = None, progress: bool = False) -> dict[str, Any]:
    tc = cfg.tracking
    alias = alias or tc.reevaluate_alias
    name = f"{tc.unet_model_name}-{variant}"
    workdir = Path(workdir)
    unet = resolve_alias(tc, name, alias, dst_dir=workdir / "unet")
    if unet is None:
        raise GdmError(f"reevaluate: no version of registered model '{name}' carries alias '{alias}' "
                       f"in {tc.tracking_uri} (train it with tracking enabled, or set the alias)")
    clf_path = None
    if scale > 0:
        clf = resolve_alias(tc, tc.classifier_model_name, alias, dst_dir=workdir / "classifier")
        if clf is None:
            raise GdmError(f"reevaluate: guided scale {scale:g} needs '{tc.classifier_model_name}@{alias}'")
        clf_path = _checkpoint(clf["artifact_dir"], "classifier.pt")
    previous = latest_evaluation(tc, name, unet["version"])
    run = stages.sample(cfg, variant, scale, unet=_checkpoint(unet["artifact_dir"], "model.pt"), classifier=clf_path,
                        out=workdir / "samples", progress=progress, parent_run_id=parent_run_id)
    metrics = stages.evaluate(cfg, run.npz, out=workdir / "metrics.json", parent_run_id=parent_run_id,
                              tags={**evaluates_tag(name, unet["version"]), "gdm.alias": alias}, variant=variant)
    delta = None if not previous or previous.get("fid") is None else metrics["fid"] - previous["fid"]
    flagged = delta is not None and abs(delta) > tc.reevaluate_tolerance
    result = {
        "model": name, "version": unet["version"], "alias": alias, "scale": scale, "fid": metrics["fid"],
        "previous_fid": None if not previous else previous.get("fid"), "delta_fid": delta,
        "tolerance": tc.reevaluate_tolerance, "flagged": flagged,
        "verdict": "first evaluation" if delta is None else "drift" if flagged else "within tolerance",
        "mlflow_run_id": metrics.get("mlflow_run_id"), "metrics": {k: metrics.get(k) for k in
                                                                   ("fid", "sfid", "is", "precision", "recall",
                                                                    "accuracy")},
    }
    log_verdict(cfg, result)
    return result


def log_verdict(cfg: Config, r: dict[str, Any]) -> None:
    """The verdict where a scheduled run's result is looked for: metrics and tags on the new evaluation
    run (delta_fid, previous_fid, within_tolerance) and tags on the model version (gdm.reevaluate.*)."""
    from gdm.tracking import Tracker
    from gdm.tracking.runs import RunHandle

    tc = cfg.tracking
    if not tc.enabled or not r.get("mlflow_run_id"):
        return
    handle = RunHandle(Tracker(tc), r["mlflow_run_id"])
    handle.log_metrics({"previous_fid": r["previous_fid"], "delta_fid": r["delta_fid"],
                        "within_tolerance": None if r["delta_fid"] is None else float(not r["flagged"])})
    handle.set_tags({"gdm.verdict": r["verdict"], "gdm.tolerance": r["tolerance"]})
    record_verdict(tc, r["model"], r["version"], r)
