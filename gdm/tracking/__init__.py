"""MLflow tracking for gdm: the only package that imports mlflow (lazily, on first use).

    tracker = Tracker(cfg.tracking)
    with tracker.start_run("train", tags=default_tags("train", data_hash)) as run:
        run.log_params(cfg.flat())               # params named exactly like params.yaml keys
        run.log_metrics({"loss": 0.1}, step=100)
        run.log_artifact("runs/base/model", "model")
        run.register_model(cfg.tracking.unet_model_name, "model", cfg.tracking.aliases)

A failing backend never stops training: one warning, then every call is a no-op.
"""

from gdm.tracking.queries import find_runs, latest_evaluation, resolve_alias
from gdm.tracking.registry import promote, record_verdict
from gdm.tracking.runs import RunHandle, Tracker, default_warn
from gdm.tracking.tags import (
    DATA_HASH_TAG,
    EVALUATES_TAG,
    GIT_COMMIT_TAG,
    STAGE_TAG,
    default_tags,
    evaluates_tag,
    git_commit,
)

__all__ = [
    "DATA_HASH_TAG",
    "EVALUATES_TAG",
    "GIT_COMMIT_TAG",
    "STAGE_TAG",
    "RunHandle",
    "Tracker",
    "default_tags",
    "default_warn",
    "evaluates_tag",
    "find_runs",
    "git_commit",
    "latest_evaluation",
    "promote",
    "record_verdict",
    "resolve_alias",
]
