"""Run tags that tie an MLflow run to its code, data and DVC experiment."""

from __future__ import annotations

import os
import subprocess

GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the key MLflow's UI shows as the run's commit
STAGE_TAG = "gdm.stage"
DATA_HASH_TAG = "gdm.data_hash"
EVALUATES_TAG = "gdm.evaluates"  # "<model name>:<version>" on runs that evaluate a model version
DVC_ENV_TAGS = {  # set by `dvc repro` / `dvc exp run` in stage commands
    "DVC_EXP_NAME": "dvc.exp_name",
    "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev",
    "DVC_STAGE": "dvc.stage",
}


def git_commit(cwd: str | None = None) -> str:
    """`git rev-parse HEAD`, or "unknown" outside a repository / without git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def default_tags(stage: str, data_hash: str | None = None) -> dict[str, str]:
    """Git commit, gdm stage, data content hash and the DVC experiment variables when set."""
    tags = {GIT_COMMIT_TAG: git_commit(), STAGE_TAG: stage}
    if data_hash:
        tags[DATA_HASH_TAG] = data_hash
    for env, key in DVC_ENV_TAGS.items():
        if os.environ.get(env):
            tags[key] = os.environ[env]
    return tags


def evaluates_tag(model_name: str, version: str | int) -> dict[str, str]:
    """Tag for a run that evaluates `model_name` version `version` (see `latest_evaluation`)."""
    return {EVALUATES_TAG: f"{model_name}:{version}"}
