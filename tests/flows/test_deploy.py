"""prefect.yaml as shipped, the GDM_* knobs and the pull step (offline: no server)."""

import os
from pathlib import Path

import pytest
import yaml

from flows.deploy import local_deployments, pool_config
from flows.steps import enter_checkout

ROOT = Path(__file__).resolve().parents[2]


def test_pool_deployment_names_never_collide_with_served_ones():
    shipped = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pool = {(d["entrypoint"].split(":")[1], d["name"]) for d in shipped["deployments"]}
    served = {(d.flow_name if hasattr(d, "flow_name") else None, d.name) for d in local_deployments()}
    assert not {n for _, n in pool} & {n for _, n in served}
    # no template that Prefect cannot resolve (Jinja filters such as `| default(...)` reach the worker verbatim)
    assert "|" not in (ROOT / "prefect.yaml").read_text().split("deployments:")[0]
    assert shipped["pull"] == [{"flows.steps.enter_checkout": {"directory": "{{ $GDM_REPO }}"}}]


def test_env_knobs_reach_the_pool_deployments():
    doc = pool_config(ROOT / "prefect.yaml", env={"GDM_GPU_POOL": "a100", "GDM_STAGE_POOL": "h100",
                                                  "GDM_REEVALUATE_CRON": "30 1 * * 0"})
    pools = {d["name"]: d["work_pool"]["name"] for d in doc["deployments"]}
    assert pools == {"pipeline-pool": "a100", "ablation-pool": "a100", "nightly-pool": "a100", "stage": "h100"}
    nightly = next(d for d in doc["deployments"] if d["name"] == "nightly-pool")
    assert nightly["schedules"] == [{"cron": "30 1 * * 0"}]
    defaults = pool_config(ROOT / "prefect.yaml", env={})
    assert {d["work_pool"]["name"] for d in defaults["deployments"]} == {"gpu"}


def test_pull_step_enters_the_checkout_or_says_why_not(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    for name in ("dvc.yaml", "params.yaml"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("")
    (checkout / "flows").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GDM_REPO", raising=False)
    assert enter_checkout(str(checkout)) == {"directory": str(checkout.resolve())}
    assert Path(os.getcwd()) == checkout.resolve()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PWD", str(checkout))  # GDM_REPO unset: Prefect drops the key; the worker's $PWD is used
    assert enter_checkout() == {"directory": str(checkout.resolve())}
    with pytest.raises(FileNotFoundError, match=r"not a gdm checkout \(no dvc.yaml, params.yaml, flows\).*GDM_REPO"):
        enter_checkout(str(tmp_path / "elsewhere"))
