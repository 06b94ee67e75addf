"""Prefect flows: thin wiring over `gdm.stages` (the only package that imports prefect).

Importing this package sets project-local Prefect defaults (unless already set), measured on small
machines (PLATFORM.md): a project-local PREFECT_HOME, result storage for cross-process caching,
no analytics, and a longer start-up timeout for the temporary API server. Logs stay at Prefect's
INFO default, so flow and task logs reach the UI and the console; only third-party chatter that
says nothing to a user (MLflow's database migrations, HTTP request lines) is turned down.
"""

import logging
import os
from pathlib import Path


def project_root() -> Path:
    """The checkout these flows belong to (where dvc.yaml is), else the working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "dvc.yaml").is_file() else Path.cwd()


_ROOT = project_root()
for _key, _value in {
    "PREFECT_HOME": str(_ROOT / ".prefect"),
    "PREFECT_LOCAL_STORAGE_PATH": str(_ROOT / ".prefect" / "storage"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ.setdefault(_key, _value)

# Noise filter: these loggers narrate internals at INFO (schema migrations on every new MLflow
# store, one line per HTTP request); our own and Prefect's INFO lines are kept.
NOISY_LOGGERS = ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "httpx", "httpcore",
                 "mlflow.system_metrics", "distributed.http.proxy", "distributed.utils_perf")
for _name in NOISY_LOGGERS:
    logging.getLogger(_name).setLevel(logging.WARNING)
