"""A real Prefect server and process-pool workers for the tests (127.0.0.1, random port, stopped by PID).

`prefect_server` (session scope) runs `prefect server start` in its own PREFECT_HOME; `PrefectServer.env`
is the environment a CLI command or a worker needs to talk to it. `start_worker` runs
`prefect worker start --pool NAME` (polling every second) and `stop` ends it with SIGTERM (PLATFORM.md:
a worker may ignore SIGINT once a run started), then SIGKILL if it does not go.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class PrefectServer:
    url: str
    home: Path
    env: dict[str, str]
    log: Path

    def api(self, method: str, path: str, json: dict | None = None):
        import httpx

        r = httpx.request(method, f"{self.url}{path}", json=json, timeout=30)
        r.raise_for_status()
        return r.json()


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GIT_", "DVC_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DVC_NO_ANALYTICS="1",
               PREFECT_LOCAL_STORAGE_PATH=str(home / "storage"), MLFLOW_DISABLE_TELEMETRY="true",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = _base_env(home)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    server = PrefectServer(url, home, {**env, "PREFECT_API_URL": url}, log)
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.skip(f"prefect server could not start (exit {proc.returncode}): {log.read_text()[-2000:]}")
            try:
                server.api("GET", "/health")
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.skip(f"prefect server did not answer within 120 s: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield server
    finally:
        stop(proc)


def start_worker(server: PrefectServer, pool: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(server.home / f"worker-{pool}.log", "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                            cwd=cwd, env={**server.env, "PREFECT_WORKER_QUERY_SECONDS": "1",
                                          "PREFECT_WORKER_PREFETCH_SECONDS": "1", **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
