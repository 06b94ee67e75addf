import os
import tempfile

import pytest

# Prefect state and results of the test session live in a throw-away folder of this process (one per
# pytest-xdist worker), never in the repo's or the user's Prefect home (`make` exports PREFECT_HOME).
_PREFECT = tempfile.mkdtemp(prefix="gdm-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = os.path.join(_PREFECT, "storage")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

# Shared S3 API server (moto, 127.0.0.1, random port) for any test module: s3_server, s3_env, s3_bucket.
from tests.s3_fixtures import s3_bucket_fixture, s3_env_fixture, s3_server_fixture  # noqa: F401
