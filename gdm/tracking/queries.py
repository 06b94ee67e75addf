"""Read-side helpers: registered model aliases, evaluations of a version, run search.

Like `Tracker`, they never raise on a backend failure: they warn and answer "nothing found"
(None / []), and they answer that without touching MLflow when tracking is disabled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gdm.config import TrackingConfig
from gdm.tracking.runs import default_warn, error_code, make_client
from gdm.tracking.tags import EVALUATES_TAG

_MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}  # unknown model / alias


def _query(cfg: TrackingConfig, what: str, fn: Callable[[Any], Any], default: Any, warn) -> Any:
    if not cfg.enabled:
        return default
    try:
        return fn(make_client(cfg.tracking_uri, cfg.timeout_s))
    except Exception as exc:
        warn(
            f"MLflow tracking at '{cfg.tracking_uri}' failed during {what} "
            f"({type(exc).__name__}: {exc}); treating it as not found"
        )
        return default


def resolve_alias(
    cfg: TrackingConfig,
    model_name: str,
    alias: str,
    *,
    dst_dir: str | Path | None = None,
    warn: Callable[[str], None] = default_warn,
) -> dict[str, Any] | None:
    """{"name", "version", "run_id", "source", "artifact_dir"} of `model_name@alias`, its
    artifacts downloaded to `dst_dir` (a fresh temporary folder when None); None if unknown."""

    def _resolve(client: Any) -> dict[str, Any] | None:
        import mlflow.artifacts

        try:
            mv = client.get_model_version_by_alias(model_name, alias)
        except Exception as exc:
            if error_code(exc) in _MISSING:
                return None
            raise
        if dst_dir is not None:
            Path(dst_dir).mkdir(parents=True, exist_ok=True)
        # Download through the version's own source URI with an explicit tracking URI: a
        # `models:/name@alias` URI would be resolved against the *default* registry instead.
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(model_name, mv.version),
            dst_path=None if dst_dir is None else str(dst_dir),
            tracking_uri=cfg.tracking_uri,
        )
        return {
            "name": model_name,
            "version": str(mv.version),
            "run_id": mv.run_id,
            "source": mv.source,
            "artifact_dir": str(local),
        }

    return _query(cfg, f"resolve_alias('{model_name}@{alias}')", _resolve, None, warn)


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


def latest_evaluation(
    cfg: TrackingConfig,
    model_name: str,
    version: str | int,
    *,
    warn: Callable[[str], None] = default_warn,
) -> dict[str, float] | None:
    """Metrics of the newest FINISHED run in `cfg.experiment` tagged
    gdm.evaluates=<model_name>:<version>, or None when there is none."""
    filt = (
        f"tags.`{EVALUATES_TAG}` = {_quote(f'{model_name}:{version}')} "
        "and attributes.status = 'FINISHED'"
    )

    def _latest(client: Any) -> dict[str, float] | None:
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id], filt, max_results=1, order_by=["attributes.start_time DESC"]
        )
        return dict(runs[0].data.metrics) if runs else None

    return _query(cfg, f"latest_evaluation('{model_name}:{version}')", _latest, None, warn)


def find_runs(
    cfg: TrackingConfig,
    experiment: str,
    filter_string: str = "",
    *,
    warn: Callable[[str], None] = default_warn,
) -> list[dict[str, Any]]:
    """Runs of `experiment` matching an MLflow filter string, newest first:
    [{"id", "name", "status", "tags", "params", "metrics"}]."""

    def _find(client: Any) -> list[dict[str, Any]]:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        out: list[dict[str, Any]] = []
        token = None
        while True:
            page = client.search_runs(
                [exp.experiment_id],
                filter_string,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            out += [_run_dict(r) for r in page]
            token = page.token
            if not token:
                return out

    return _query(cfg, f"find_runs('{experiment}')", _find, [], warn)


def _run_dict(run: Any) -> dict[str, Any]:
    return {
        "id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "tags": dict(run.data.tags),
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
    }
