"""Hostile conditions: a sick tracking server, two writers on one output, concurrent first use of a
SQLite store, leftovers of killed runs, a kill right after a checkpoint, NaN in the middle of sampling."""

from __future__ import annotations

import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from gdm import stages
from gdm.config import TrackingConfig, validate
from gdm.errors import BusyError, GdmError
from gdm.locks import exclusive, held_lock
from gdm.tracking import Tracker
from tests.hostile.conftest import diff, run_cli, snapshot


# ------------------------------------------------------------------------------ tracking servers
class SilentServer:
    """Accepts connections, reads the request, never answers (the ~20-minute stall of the issue)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except TimeoutError:
                continue

    def close(self):
        self.stop.set()
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


class _Answer500(BaseHTTPRequestHandler):
    def _fail(self):
        self.send_response(500)
        self.end_headers()

    do_GET = do_POST = _fail

    def log_message(self, *args):
        pass


@pytest.fixture
def silent_server():
    s = SilentServer()
    yield f"http://127.0.0.1:{s.port}"
    s.close()


@pytest.fixture
def error_server():
    server = HTTPServer(("127.0.0.1", 0), _Answer500)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def mlflow_defaults(monkeypatch):
    """MLflow's own retry settings (7 retries, 120 s timeout): the bound must come from gdm."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)


def test_silent_server_costs_the_configured_budget_then_work_goes_on_untracked(silent_server, mlflow_defaults):
    warnings: list[str] = []
    tracker = Tracker(TrackingConfig(tracking_uri=silent_server, timeout_s=0.5), warn=warnings.append)
    t0 = time.monotonic()
    with tracker.start_run("train") as run:
        run.log_metrics({"loss": 1.0})
    took = time.monotonic() - t0
    assert run.id is None and not tracker.active
    assert len(warnings) == 1 and silent_server in warnings[0] and "tracking.timeout_s" in warnings[0]
    assert took < 15, took  # the budget (0.5 s) plus slack on a busy machine, never MLflow's 2 x 120 s


def test_stage_with_a_500_server_trains_untracked_and_says_so_before_the_first_step(
        world, tmp_path, error_server, mlflow_defaults, capsys):
    raw = {**world.raw, "tracking": {"enabled": True, "tracking_uri": error_server, "timeout_s": 2.0}}
    cfg = validate(raw)
    seen: list[str] = []
    result = stages.train(cfg, "cond", out=tmp_path / "run", progress=False,
                          on_log=lambda step, row: seen.append(capsys.readouterr().err))
    assert result["mlflow_run_id"] is None and (tmp_path / "run" / "model.pt").is_file()
    assert error_server in seen[0] and "HTTP 500" in seen[0]  # printed before step 1 was logged


# ---------------------------------------------------------------------------------- SQLite store
def _track_one(args):
    uri, name = args
    tracker = Tracker(TrackingConfig(tracking_uri=uri, experiment="race"), warn=print)
    with tracker.start_run(name) as run:
        run.log_params({"who": name})
    return run.id


def test_concurrent_first_use_of_a_fresh_sqlite_store_loses_no_run(tmp_path):
    import multiprocessing

    import mlflow  # noqa: F401  (imported once here; the forked workers share it)

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        ids = pool.map(_track_one, [(uri, f"stage-{i}") for i in range(3)])
    assert all(ids), ids  # no process fell back to untracked
    from gdm.tracking.runs import make_client

    runs = make_client(uri).search_runs([make_client(uri).get_experiment_by_name("race").experiment_id])
    assert sorted(r.data.params["who"] for r in runs) == ["stage-0", "stage-1", "stage-2"]


# ------------------------------------------------------------------------ two writers, one output
def test_second_sample_run_on_the_same_output_is_refused_and_the_first_completes(world, tmp_path, capsys):
    out = tmp_path / "samples"
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    class Pause:
        def advance(self, n=1, **fields):
            started.set()
            release.wait(30)

    def first():
        from gdm.sampling import sample

        cfg = validate(world.raw)
        try:
            sample(world.unet, out, cfg.sample, 0.0, progress=Pause())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(60)
    before = snapshot(out)
    code, _, err = run_cli(["sample", "-q", "--params", world.params, "--unet", world.unet, "--out", out], capsys)
    assert code == 2 and "Traceback" not in err
    assert "being written by another process" in " ".join(err.split()) and str(out) in err
    assert not diff(before, snapshot(out))  # the refused run touched nothing of the first one's
    release.set()
    t.join(60)
    assert not errors
    npz = next(out.glob("*.npz"))
    assert np.load(npz)["arr_0"].shape[0] == 6
    assert not list(out.glob(".*"))  # lock and chunks gone after the first run finished


def test_exclusive_claim_waits_for_a_holder_that_finishes(tmp_path):
    lock = tmp_path / ".x.lock"
    with exclusive(lock, "x"), pytest.raises(BusyError, match="x is being written"), exclusive(lock, "x"):
        pass
    done = threading.Event()

    def hold():
        with exclusive(lock, "x"):
            done.set()
            time.sleep(0.5)

    t = threading.Thread(target=hold)
    t.start()
    done.wait(10)
    with exclusive(lock, "x", wait_s=30):  # waits for the holder instead of failing
        pass
    t.join()
    assert not lock.exists()


# ------------------------------------------------------------------------- leftovers of killed runs
def test_stale_temporaries_are_removed_by_the_next_run_but_a_live_one_is_kept(world, tmp_path):
    run = tmp_path / "run"
    ck = run / "checkpoints"
    ck.mkdir(parents=True)
    stale = [ck / ".ckpt-00000001.pt.k1ll3d.tmp", run / ".model.pt.x7y8z9.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
    live = ck / ".ckpt-00000009.pt.l1v3.tmp"
    live.write_bytes(b"x")
    fd = os.open(live, os.O_RDONLY)
    with held_lock(fd):  # another process still writing it
        stages.train(validate(world.raw), "cond", out=run, progress=False)
        assert live.exists()
    assert not any(p.exists() for p in stale)

    prep = tmp_path / "prep"
    leftover = prep / f".{world.dataset.name}.d34d.tmp"  # a prepare killed while writing its shards
    leftover.mkdir(parents=True)
    (leftover / "train-00000.parquet").write_bytes(b"half")
    stages.prepare(validate({**world.raw, "data": {**world.raw["data"], "out_dir": str(prep)}}), progress=False)
    assert sorted(p.name for p in prep.iterdir()) == [world.dataset.name]


def test_kill_right_after_a_checkpoint_keeps_that_steps_metrics_row(world, tmp_path, monkeypatch):
    from gdm.train.checkpoints import CheckpointDir

    cfg = validate({**world.raw, "train": {**world.raw["train"], "steps": 3, "checkpoint_every": 1}})
    whole = stages.train(cfg, "cond", out=tmp_path / "whole", progress=False)
    real = CheckpointDir.save

    def save_then_die(self, step, payload):
        path = real(self, step, payload)
        if step == 2:
            raise KeyboardInterrupt  # killed just after the checkpoint landed
        return path

    monkeypatch.setattr(CheckpointDir, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        stages.train(cfg, "cond", out=tmp_path / "part", progress=False)
    rows = (tmp_path / "part" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    monkeypatch.setattr(CheckpointDir, "save", real)
    stages.train(cfg, "cond", out=tmp_path / "part", progress=False)
    steps = [r.split(",")[0] for r in (tmp_path / "part" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3"] and whole["steps"] == 3


# --------------------------------------------------------------------------- NaN while sampling
def test_a_step_that_produces_nan_stops_sampling_naming_step_and_sample(world, tmp_path, monkeypatch):
    import gdm.sampling as smod

    real = smod.load_model

    def poisoned(*args, **kwargs):
        model, ckpt = real(*args, **kwargs)
        forward, calls = model.forward, {"n": 0}

        def bad_forward(x, t, y=None):
            out = forward(x, t, y)
            calls["n"] += 1
            if calls["n"] == 3:
                out = out.clone()
                out[1] = float("nan")
            return out

        model.forward = bad_forward
        return model, ckpt

    monkeypatch.setattr(smod, "load_model", poisoned)
    cfg = validate(world.raw)
    out = tmp_path / "samples"
    with pytest.raises(GdmError, match=r"step 3 of 5 .*sample index\(es\) \[1\]"):
        smod.sample(world.unet, out, cfg.sample, 0.0)
    assert not out.exists()  # no npz, no chunk folder, no empty output folder


def test_finite_watch_passes_finite_runs_untouched():
    from gdm.sampling import FiniteWatch

    watch = FiniteWatch(lambda x, t: x * 2)
    x = torch.ones(3, 1, 2, 2)
    assert torch.equal(watch(x, torch.zeros(3)), x * 2)
    watch.check(x, np.arange(3))


# ------------------------------------------------------------------------------ the CLI wrapper
def test_an_unexpected_exception_shows_its_traceback_and_asks_for_a_report(world, capsys, monkeypatch):
    def bug(*a, **k):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(stages, "prepare", bug)
    code, _, err = run_cli(["prepare", "--params", world.params], capsys)
    assert code == 1
    assert "Traceback" in err and "RuntimeError: an internal bug" in err and "please report it" in err


def test_divergence_message_names_no_checkpoint_when_none_was_written(world, tmp_path, monkeypatch):
    import gdm.train.diffusion as trainer
    from gdm.train.optim import NonFiniteLoss

    real = trainer.training_losses

    def diverged(*args, **kwargs):
        terms = real(*args, **kwargs)
        return {**terms, "loss": terms["loss"] * float("nan")}

    monkeypatch.setattr(trainer, "training_losses", diverged)
    cfg = validate({**world.raw, "train": {**world.raw["train"], "steps": 4, "checkpoint_every": 100}})
    with pytest.raises(NonFiniteLoss) as exc:
        stages.train(cfg, "cond", out=tmp_path / "run", progress=False)
    assert "None" not in str(exc.value) and "No checkpoint had been written yet" in str(exc.value)


def test_subprocess_refusals_exit_2_without_traceback(world, tmp_path):
    """The entry point as users run it (a fresh process): an alias bomb, and --scale nan."""
    import subprocess
    import sys

    bomb = tmp_path / "bomb.yaml"
    levels = ["  - &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb.write_text("b:\n" + "\n".join(levels) + "\nunet:\n  attention_resolutions: *l8\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "COLUMNS": "300"}
    for argv, culprit in ((["train", "--params", str(bomb)], "alias bomb"),
                          (["sample", "--params", str(world.params), "--scale", "nan"], "sample.scales")):
        r = subprocess.run([sys.executable, "-m", "gdm", *argv], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300, check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr and culprit in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]
