"""gdm.tracking against a real (copied, pre-migrated) SQLite MLflow backend under tmp_path."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from gdm.config import Config, TrackingConfig
from gdm.tracking import (
    DATA_HASH_TAG,
    GIT_COMMIT_TAG,
    STAGE_TAG,
    Tracker,
    default_tags,
    evaluates_tag,
    find_runs,
    latest_evaluation,
    resolve_alias,
)
from tests.tracking_fixtures import (  # noqa: F401 (fixtures register by import)
    MlflowSandbox,
    mlflow_sandbox_fixture,
    mlflow_template_db_fixture,
)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Anything written relative to the working directory (mlflow.db, mlruns/) lands here."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _tracker(sb: MlflowSandbox, warnings: list[str], **changes) -> Tracker:
    cfg = sb.cfg.model_copy(update=changes)
    return Tracker(cfg, warn=warnings.append, artifact_location=sb.artifact_location)


def _run(sb: MlflowSandbox, run_id: str) -> dict:
    (run,) = [r for r in find_runs(sb.cfg, sb.cfg.experiment) if r["id"] == run_id]
    return run


def test_parent_and_child_runs_from_threads(mlflow_sandbox: MlflowSandbox) -> None:
    warnings: list[str] = []
    tracker = _tracker(mlflow_sandbox, warnings)
    child_ids: list[str | None] = []

    with tracker.start_run("pipeline", tags={"gdm.stage": "pipeline"}) as parent:

        def child(i: int) -> None:
            with tracker.start_run(f"train-{i}", parent_run_id=parent.id) as run:
                run.log_metrics({"loss": float(i)}, step=1)
                child_ids.append(run.id)

        threads = [threading.Thread(target=child, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert warnings == []
    assert parent.id is not None and len(child_ids) == 3 and None not in child_ids
    runs = {r["id"]: r for r in find_runs(mlflow_sandbox.cfg, "gdm-test")}
    assert runs[parent.id]["status"] == "FINISHED"
    assert runs[parent.id]["name"] == "pipeline"
    assert "mlflow.parentRunId" not in runs[parent.id]["tags"]
    for cid in child_ids:
        assert runs[cid]["tags"]["mlflow.parentRunId"] == parent.id
        assert runs[cid]["status"] == "FINISHED"
    assert sorted(runs[c]["metrics"]["loss"] for c in child_ids) == [0.0, 1.0, 2.0]


def test_params_use_flattened_config_names(mlflow_sandbox: MlflowSandbox) -> None:
    warnings: list[str] = []
    cfg = Config()
    flat = cfg.flat()
    assert len(flat) > 100  # more than one MLflow batch of params
    tracker = _tracker(mlflow_sandbox, warnings)
    batch_sizes: list[int] = []
    log_batch = tracker.client.log_batch

    def spy(run_id, **kw):  # a tracking server rejects > 100 params per batch; SQLite does not
        batch_sizes.append(len(kw["params"]))
        return log_batch(run_id, **kw)

    tracker.client.log_batch = spy
    with tracker.start_run("train") as run:
        run.log_params(flat)
        run.log_params({"note": "x" * 7000})
    assert max(batch_sizes) <= 100 and sum(batch_sizes) == len(flat) + 1
    params = _run(mlflow_sandbox, run.id)["params"]
    assert warnings == []
    assert set(flat) | {"note"} == set(params)
    assert params["unet.model_channels"] == "32"
    assert json.loads(params["unet.channel_mult"]) == [1.0, 2.0]
    assert params["train.grad_clip"] == "None"
    assert json.loads(params["pipeline.models"]) == {
        "cond": {},
        "uncond": {"unet.num_classes": None},
    }
    assert len(params["note"]) == 6000  # MLflow's param value limit


def test_metrics_keep_steps_and_skip_non_numbers(mlflow_sandbox: MlflowSandbox) -> None:
    warnings: list[str] = []
    tracker = _tracker(mlflow_sandbox, warnings)
    with tracker.start_run("train") as run:
        for step, loss in [(0, 1.0), (10, 0.5), (20, 0.25)]:
            run.log_metrics({"loss": loss, "lr": None, "phase": "warmup"}, step=step)
        run.log_metrics({"np": np.float32(1.5), "pt": torch.tensor(2.5), "n": 3})
    history = tracker.client.get_metric_history(run.id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (10, 0.5), (20, 0.25)]
    metrics = _run(mlflow_sandbox, run.id)["metrics"]
    assert metrics == {"loss": 0.25, "np": 1.5, "pt": 2.5, "n": 3.0}
    assert warnings == []


def test_artifacts_file_dir_and_dict(mlflow_sandbox: MlflowSandbox, tmp_path: Path) -> None:
    warnings: list[str] = []
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    model_dir = tmp_path / "model"
    (model_dir / "sub").mkdir(parents=True)
    (model_dir / "weights.pt").write_bytes(b"\x00\x01")
    (model_dir / "sub" / "config.json").write_text("{}")
    with _tracker(mlflow_sandbox, warnings).start_run("train") as run:
        run.log_artifact(report)
        run.log_artifact(model_dir, "model")
        run.log_dict({"fid": 1.25}, "metrics.json")
        run.log_artifact(tmp_path / "missing.txt")  # warned and skipped, not fatal
    root = mlflow_sandbox.artifact_location / run.id / "artifacts"
    assert (root / "report.md").read_text() == "# report\n"
    assert (root / "model" / "weights.pt").read_bytes() == b"\x00\x01"
    assert (root / "model" / "sub" / "config.json").exists()
    assert json.loads((root / "metrics.json").read_text()) == {"fid": 1.25}
    assert len(warnings) == 1 and "missing.txt" in warnings[0]


def test_register_model_aliases_and_resolve(mlflow_sandbox: MlflowSandbox, tmp_path: Path) -> None:
    warnings: list[str] = []
    tracker = _tracker(mlflow_sandbox, warnings)
    versions, run_ids = [], []
    for i in range(2):
        model_dir = tmp_path / f"model{i}"
        model_dir.mkdir()
        (model_dir / "ema.pt").write_text(f"weights {i}")
        aliases = ("candidate",) if i == 0 else ("candidate", "champion")
        with tracker.start_run(f"train-{i}") as run:
            run.log_artifact(model_dir, "model")
            versions.append(run.register_model("gdm-unet", "model", aliases))
            run_ids.append(run.id)
    assert versions == ["1", "2"]

    found = resolve_alias(mlflow_sandbox.cfg, "gdm-unet", "champion", dst_dir=tmp_path / "dl")
    assert found is not None
    assert (found["name"], found["version"], found["run_id"]) == ("gdm-unet", "2", run_ids[1])
    assert found["source"] == f"runs:/{run_ids[1]}/model"
    assert (Path(found["artifact_dir"]) / "ema.pt").read_text() == "weights 1"
    assert resolve_alias(mlflow_sandbox.cfg, "gdm-unet", "candidate")["version"] == "2"
    mv = tracker.client.get_model_version("gdm-unet", "1")
    assert mv.tags["gdm.run_id"] == run_ids[0] and mv.aliases == []

    assert resolve_alias(mlflow_sandbox.cfg, "gdm-unet", "nope") is None
    assert resolve_alias(mlflow_sandbox.cfg, "no-such-model", "champion") is None
    off = _tracker(mlflow_sandbox, warnings, register_models=False)
    with off.start_run("train-off") as run:
        assert run.register_model("gdm-unet", "model", ["candidate"]) is None
    assert warnings == []


def test_latest_evaluation(mlflow_sandbox: MlflowSandbox) -> None:
    warnings: list[str] = []
    cfg = mlflow_sandbox.cfg
    tracker = _tracker(mlflow_sandbox, warnings)
    assert latest_evaluation(cfg, "gdm-unet", "1") is None
    for fid, status, tags in [
        (9.0, "FINISHED", evaluates_tag("gdm-unet", 1)),
        (7.0, "FINISHED", evaluates_tag("gdm-unet", 1)),
        (1.0, "FAILED", evaluates_tag("gdm-unet", 1)),  # not finished: ignored
        (2.0, "FINISHED", evaluates_tag("gdm-unet", 2)),  # another version
    ]:
        run = tracker.start_run("evaluate", tags=tags)
        run.log_metrics({"fid": fid, "is": fid / 2})
        run.end(status)
    assert latest_evaluation(cfg, "gdm-unet", "1") == {"fid": 7.0, "is": 3.5}
    assert latest_evaluation(cfg, "gdm-unet", 2) == {"fid": 2.0, "is": 1.0}
    assert latest_evaluation(cfg, "gdm-unet", "3") is None
    failed = find_runs(cfg, cfg.experiment, "attributes.status = 'FAILED'")
    assert [r["metrics"]["fid"] for r in failed] == [1.0]
    assert find_runs(cfg, "no-such-experiment") == []
    assert warnings == []


def test_default_tags_git_and_dvc(monkeypatch: pytest.MonkeyPatch, _isolated_cwd: Path) -> None:
    for env in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
        monkeypatch.delenv(env, raising=False)
    outside = default_tags("train")
    assert outside == {GIT_COMMIT_TAG: "unknown", STAGE_TAG: "train"}  # tmp dir: no repository

    monkeypatch.chdir(Path(__file__).resolve().parent)  # inside the project's git repository
    monkeypatch.setenv("DVC_EXP_NAME", "sharp-owl")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    monkeypatch.setenv("DVC_STAGE", "train@base")
    tags = default_tags("train", data_hash="abc123")
    assert re.fullmatch(r"[0-9a-f]{40}", tags[GIT_COMMIT_TAG])
    assert tags[STAGE_TAG] == "train" and tags[DATA_HASH_TAG] == "abc123"
    assert tags["dvc.exp_name"] == "sharp-owl"
    assert tags["dvc.exp_baseline_rev"] == "a" * 40
    assert tags["dvc.stage"] == "train@base"


def test_rejected_request_skips_one_call_only(mlflow_sandbox: MlflowSandbox) -> None:
    warnings: list[str] = []
    tracker = _tracker(mlflow_sandbox, warnings)
    with tracker.start_run("train") as run:
        run.log_params({"train.lr": 1e-3})
        run.log_params({"train.lr": 2e-3})  # MLflow params are immutable
        run.log_metrics({"bad@name": 1.0})
        run.log_metrics({"loss": 0.5})
    assert len(warnings) == 2 and all("rejected" in w for w in warnings)
    assert tracker.active
    found = _run(mlflow_sandbox, run.id)
    assert found["params"] == {"train.lr": "0.001"} and found["metrics"] == {"loss": 0.5}


def test_run_context_marks_failure_and_reraises(mlflow_sandbox: MlflowSandbox) -> None:
    tracker = _tracker(mlflow_sandbox, [])
    with pytest.raises(ZeroDivisionError), tracker.start_run("train") as run:
        _ = 1 / 0
    assert _run(mlflow_sandbox, run.id)["status"] == "FAILED"


def test_unreachable_backend_warns_once_and_goes_quiet(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _isolated_cwd: Path
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = TrackingConfig(tracking_uri="http://127.0.0.1:9", experiment="gdm-test")  # closed port
    warnings: list[str] = []
    tracker = Tracker(cfg, warn=warnings.append)
    assert tracker.active
    (tmp_path / "f.txt").write_text("x")
    with tracker.start_run("train", tags={"a": "b"}) as run:
        assert run.id is None
        run.log_params({"unet.model_channels": 32})
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_artifact(tmp_path / "f.txt")
        run.log_dict({"a": 1}, "a.json")
        run.set_tags({"k": "v"})
        assert run.register_model("gdm-unet", "model", ["candidate"]) is None
    child = tracker.start_run("child", parent_run_id="abc")
    assert child.id is None and not tracker.active
    assert len(warnings) == 1
    assert "http://127.0.0.1:9" in warnings[0] and "start_run('train')" in warnings[0]

    query_warnings: list[str] = []
    assert resolve_alias(cfg, "gdm-unet", "champion", warn=query_warnings.append) is None
    assert latest_evaluation(cfg, "gdm-unet", "1", warn=query_warnings.append) is None
    assert find_runs(cfg, "gdm-test", warn=query_warnings.append) == []
    assert len(query_warnings) == 3 and all("127.0.0.1:9" in w for w in query_warnings)
    assert list(_isolated_cwd.iterdir()) == []


def test_unreachable_server_fails_fast_without_retry_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # MLflow's default 7 retries with backoff would stall for minutes; the probe answers at once.
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    warnings: list[str] = []
    tracker = Tracker(TrackingConfig(tracking_uri="http://127.0.0.1:9"), warn=warnings.append)
    run = tracker.start_run("train")
    run.log_metrics({"loss": 1.0})
    run.end()
    assert run.id is None and not tracker.active
    assert len(warnings) == 1 and "cannot connect to 127.0.0.1:9" in warnings[0]


class _Failing(BaseHTTPRequestHandler):
    def _fail(self) -> None:
        self.send_response(503)
        self.end_headers()

    do_GET = do_POST = do_PATCH = _fail

    def log_message(self, *args: object) -> None:
        pass


def test_server_that_errors_degrades(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    server = HTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}"
        warnings: list[str] = []
        tracker = Tracker(TrackingConfig(tracking_uri=uri), warn=warnings.append)
        with tracker.start_run("train") as run:
            run.log_params({"a": 1})
        assert run.id is None and not tracker.active
        assert len(warnings) == 1 and uri in warnings[0]
    finally:
        server.shutdown()
        server.server_close()


def test_disabled_tracker_touches_nothing(tmp_path: Path, _isolated_cwd: Path) -> None:
    cfg = TrackingConfig(enabled=False)  # default sqlite:///mlflow.db in the working directory
    warnings: list[str] = []
    tracker = Tracker(cfg, warn=warnings.append)
    assert not tracker.active
    (tmp_path / "f.txt").write_text("x")
    with tracker.start_run("train") as run:
        assert run.id is None
        run.log_params({"a": 1})
        run.log_metrics({"loss": 1.0})
        run.log_artifact(tmp_path / "f.txt")
        assert run.register_model("gdm-unet", "model", ["candidate"]) is None
    assert resolve_alias(cfg, "gdm-unet", "champion") is None
    assert latest_evaluation(cfg, "gdm-unet", "1") is None
    assert find_runs(cfg, "gdm-digits") == []
    assert warnings == []
    assert list(_isolated_cwd.iterdir()) == []  # no mlflow.db, no mlruns/
