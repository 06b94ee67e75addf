"""`train.nproc: 2` on the user's paths: `dvc repro` runs the train stage as a 2-rank torchrun job
(gdm train re-launches itself), with nothing else changed in dvc.yaml."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from gdm.io import load_checkpoint, read_json
from tests.distributed.conftest import DDP_PARAMS, ROOT, run
from tests.helpers import TINY

pytestmark = pytest.mark.distributed
BIN = Path(sys.executable).parent


def test_dvc_repro_runs_the_train_stage_on_two_ranks(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in (*TINY.items(), *DDP_PARAMS.items()):
        params[section].update(values)
    params["train"]["nproc"] = 2
    params["tracking"]["enabled"] = False
    params["pipeline"].update(models={"cond": {}}, ablations={"base": {}}, free_guidance=[])
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_COMMITTER_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    run(["git", "init", "-q"], cwd=tmp_path, **env)
    run(["dvc", "init", "-q"], cwd=tmp_path, **env)
    res = run(["dvc", "repro", "train@cond"], cwd=tmp_path, timeout=600, **env)
    assert "Running stage 'train@cond'" in res.stdout
    unet = tmp_path / "runs/cond/unet"
    assert load_checkpoint(unet / "model.pt")["world_size"] == 2
    assert read_json(unet / "metrics.json")["world_size"] == 2
    assert "train@cond" in yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
