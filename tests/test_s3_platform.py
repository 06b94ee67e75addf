"""S3 across the platform, on moto's S3 API server (127.0.0.1, random port): training from data on
S3, MLflow artifacts on S3, and DVC pushing/pulling the pipeline outputs through an S3 remote."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from gdm import stages
from gdm.data.prepare import prepare_dataset
from gdm.io import load_checkpoint
from tests.helpers import tiny_config
from tests.tracking_fixtures import (  # noqa: F401 (fixtures register by import)
    mlflow_sandbox_fixture,
    mlflow_template_db_fixture,
)

pytestmark = pytest.mark.s3


def test_training_steps_from_s3_equal_the_same_steps_from_local_shards(s3_bucket, tmp_path):
    runs = {}
    for where, out_dir in (("local", str(tmp_path / "prepared")), ("s3", f"{s3_bucket.url}/prepared")):
        cfg = tiny_config(tmp_path / where, data={"out_dir": out_dir, "random_flip": True},
                          train={"steps": 3, "checkpoint_every": 3, "num_workers": 1 if where == "s3" else 0})
        prepare_dataset(cfg.data)
        runs[where] = stages.train(cfg, "cond", progress=False)
    assert any(k.endswith(".parquet") for k in s3_bucket.keys("prepared/"))
    a, b = (load_checkpoint(runs[w]["model"]) for w in ("local", "s3"))
    assert a["data"]["content_hash"] == b["data"]["content_hash"]
    assert a["data"]["dataset"].startswith("/") and b["data"]["dataset"] == f"{s3_bucket.url}/prepared/digits"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    csv = [Path(runs[w]["model"]).with_name("metrics.csv").read_text().splitlines() for w in ("local", "s3")]
    losses = [[line.split(",")[1] for line in c[1:]] for c in csv]
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_mlflow_artifact_location_on_s3_holds_checkpoint_grid_and_metrics(s3_bucket, mlflow_sandbox, tmp_path):
    tracking = {"enabled": True, "tracking_uri": mlflow_sandbox.cfg.tracking_uri, "experiment": "gdm-s3",
                "artifact_location": f"{s3_bucket.url}/mlflow", "register_models": False}
    cfg = tiny_config(tmp_path, tracking=tracking, train={"steps": 2, "checkpoint_every": 2})
    prepare_dataset(cfg.data)
    trained = stages.train(cfg, "cond", progress=False)
    sampled = stages.sample(cfg, "cond", 0.0, progress=False)
    assert trained["mlflow_run_id"]
    keys = s3_bucket.keys("mlflow/")
    run_keys = [k for k in keys if f"/{trained['mlflow_run_id']}/artifacts/" in k]
    names = {k.split("/artifacts/", 1)[1] for k in run_keys}
    # the checkpoint inside the pyfunc model folder (MLmodel beside it), config and loss history as files
    assert {"model/MLmodel", "model/artifacts/model.pt", "files/metrics.csv", "files/config.yaml"} <= names
    grid = [k for k in keys if k.endswith(f"/artifacts/samples/{sampled.grid.name}")]
    assert len(grid) == 1 and s3_bucket.get(grid[0]) == sampled.grid.read_bytes()
    model_key = next(k for k in run_keys if k.endswith("/model/artifacts/model.pt"))
    assert s3_bucket.get(model_key) == Path(trained["model"]).read_bytes()
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()


# ---------------------------------------------------------------------------- DVC S3 remote
ROOT = Path(__file__).resolve().parents[1]


def _run(root: Path, *cmd: str, env: dict[str, str]) -> str:
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res.stdout


def _tree_hashes(*outs: Path) -> dict[str, str]:
    files = [p for o in outs for p in ([o] if o.is_file() else sorted(o.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_dvc_push_delete_cache_pull_restores_outputs_bit_identical(s3_bucket, tmp_path):
    import os
    import sys

    from tests.test_dvc_pipeline import _env, tiny_params

    env = {**_env(), **s3_bucket.server.env,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    for cmd in (("git", "init", "-q"), ("dvc", "init", "-q"), ("dvc", "repro", "prepare", "train@cond"),
                ("dvc", "remote", "add", "-d", "store", f"{s3_bucket.url}/dvcstore"),
                ("dvc", "remote", "modify", "--local", "store", "endpointurl", s3_bucket.server.endpoint_url),
                ("dvc", "push")):
        _run(root, *cmd, env=env)
    # the cached outputs of the two stages (metrics files are `cache: false`: git's business)
    outputs = (root / "data/prepared/digits", root / "runs/cond/unet/model.pt", root / "runs/cond/unet/checkpoints")
    before = _tree_hashes(*outputs)
    assert any(p.endswith("model.pt") for p in before) and any(p.endswith(".parquet") for p in before)
    assert s3_bucket.keys("dvcstore/")  # the cache went to the bucket
    shutil.rmtree(root / ".dvc" / "cache")
    for o in outputs:
        shutil.rmtree(o) if o.is_dir() else o.unlink()
    _run(root, "dvc", "pull", "prepare", "train@cond", env=env)
    assert _tree_hashes(*outputs) == before
    assert "up to date" in _run(root, "dvc", "status", "prepare", "train@cond", env=env).lower()
