"""Prefect flows: thin wiring over `gdm.stages` (the only package that imports prefect).

Importing this package sets project-local Prefect defaults (unless already set), measured on small
machines (PLATFORM.md): a project-local PREFECT_HOME, result storage for cross-process caching,
no analytics, and a longer start-up timeout for the temporary API server.
"""

import os
from pathlib import Path

_ROOT = Path.cwd()
for _key, _value in {
    "PREFECT_HOME": str(_ROOT / ".prefect"),
    "PREFECT_LOCAL_STORAGE_PATH": str(_ROOT / ".prefect" / "storage"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ.setdefault(_key, _value)
