"""Model registry writes a user asks for: promotion (`gdm promote`) and re-evaluation verdicts.

Unlike `Tracker`, these raise: a promotion or a verdict that silently did not happen is worse
than an error (the caller is a command or a scheduled flow whose whole point is this write).
"""

from __future__ import annotations

from typing import Any

from gdm.config import TrackingConfig
from gdm.errors import GdmError
from gdm.tracking.runs import error_code, make_client


def promote(cfg: TrackingConfig, model_name: str, alias: str = "champion", *, version: str | int | None = None,
            from_alias: str | None = None) -> dict[str, Any]:
    """Point `alias` at `version` of `model_name` (or at the version `from_alias` names; default the
    newest). Returns {"name", "alias", "version", "previous"}."""
    if not cfg.enabled:
        raise GdmError("promote: tracking.enabled is false; there is no model registry to promote in")
    client = make_client(cfg.tracking_uri)
    try:
        if version is None and from_alias:
            version = str(client.get_model_version_by_alias(model_name, from_alias).version)
        elif version is None:
            versions = client.search_model_versions(f"name = '{model_name}'")
            if not versions:
                raise GdmError(f"promote: registered model '{model_name}' has no versions in {cfg.tracking_uri}")
            version = max(int(v.version) for v in versions)
        client.get_model_version(model_name, str(version))
        try:
            previous = str(client.get_model_version_by_alias(model_name, alias).version)
        except Exception:
            previous = None
        client.set_registered_model_alias(model_name, alias, str(version))
        client.set_model_version_tag(model_name, str(version), f"gdm.promoted.{alias}", "true")
    except GdmError:
        raise
    except Exception as exc:
        code = error_code(exc)
        what = f"'{model_name}'" + (f" version {version}" if version is not None else "") + (
            f" (alias {from_alias})" if from_alias and version is None else "")
        raise GdmError(f"promote: cannot promote {what} to '{alias}' in {cfg.tracking_uri}: "
                       f"{code or type(exc).__name__}: {str(exc)[:300]}") from None
    return {"name": model_name, "alias": alias, "version": str(version), "previous": previous}


def record_verdict(cfg: TrackingConfig, model_name: str, version: str | int, verdict: dict[str, Any]) -> None:
    """Tags on the model version: gdm.reevaluate.{fid,previous_fid,delta_fid,verdict,run_id,at}."""
    import time

    client = make_client(cfg.tracking_uri)
    tags = {"fid": verdict.get("fid"), "previous_fid": verdict.get("previous_fid"), "delta_fid": verdict.get("delta_fid"),
            "verdict": verdict.get("verdict"), "run_id": verdict.get("mlflow_run_id"),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for k, v in tags.items():
        client.set_model_version_tag(model_name, str(version), f"gdm.reevaluate.{k}", "" if v is None else str(v))
