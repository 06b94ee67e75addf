"""Reusable MLflow fixtures: one migrated SQLite database per session, copied per test.

Migrating a fresh MLflow database costs 1.5-6 s; copying a migrated one is instant. Use from
another test module with

    from tests.tracking_fixtures import (  # noqa: F401 (fixtures register by import)
        mlflow_sandbox_fixture,
        mlflow_template_db_fixture,
    )

and take `mlflow_sandbox` as a fixture argument: it gives a `TrackingConfig` pointing at a private
database copy and an artifact folder under the test's tmp_path (pass it to
`Tracker(..., artifact_location=...)`), so nothing lands in the working directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

from gdm.config import TrackingConfig

# Before mlflow is first imported: no telemetry thread, no download progress bars in test logs.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class MlflowSandbox(NamedTuple):
    cfg: TrackingConfig
    db: Path
    artifact_location: Path


def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a migrated, empty MLflow SQLite database, created once per session."""
    db = tmp_path_factory.getbasetemp() / "mlflow-template" / "mlflow.db"
    if not db.exists():
        from gdm.tracking.runs import make_client

        db.parent.mkdir(parents=True, exist_ok=True)
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        make_client(f"sqlite:///{db}").search_experiments()  # runs the schema migrations
    return db


@pytest.fixture(scope="session", name="mlflow_template_db")
def mlflow_template_db_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_db(tmp_path_factory)


@pytest.fixture(name="mlflow_sandbox")
def mlflow_sandbox_fixture(mlflow_template_db: Path, tmp_path: Path) -> MlflowSandbox:
    """A private copy of the migrated database plus an artifact folder, both under tmp_path."""
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    shutil.copyfile(mlflow_template_db, db)
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{db}", experiment="gdm-test")
    return MlflowSandbox(cfg, db, tmp_path / "mlflow" / "artifacts")
