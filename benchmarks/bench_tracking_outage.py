"""How long a stage waits on a sick MLflow server before it starts working.

Runs the `train` stage (tiny UNet, 2 steps, on the bundled digits) three times in this process:
tracking off, a server that accepts connections and never answers, a server that answers HTTP 500;
and prints the seconds from the stage call to its first training step, plus the whole stage.
MLflow's own retry settings are cleared (MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES unset), so the
bound shown is gdm's `tracking.timeout_s` (default 10 s) and nothing else. Before it, the issue
measured ~20 minutes (silent) and ~4.3 minutes (HTTP 500).

    .venv/bin/python benchmarks/bench_tracking_outage.py [--timeout-s 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdm import stages
from gdm.config import validate

TINY = {
    "unet": {"model_channels": 32, "channel_mult": [1, 2], "attention_resolutions": [4]},
    "classifier": {"model_channels": 32, "channel_mult": [1, 2], "attention_resolutions": [4]},
    "diffusion": {"diffusion_steps": 50},
    "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 2, "log_every": 1, "device": "cpu"},
}


def silent_server() -> tuple[str, callable]:
    sock = socket.create_server(("127.0.0.1", 0))
    conns, stop = [], threading.Event()

    def serve():
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except TimeoutError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    def close():
        stop.set()
        t.join()
        for c in conns:
            c.close()
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", close


class _Answer500(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


def error_server() -> tuple[str, callable]:
    server = HTTPServer(("127.0.0.1", 0), _Answer500)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def close():
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_port}", close


def time_stage(raw: dict, root: Path, name: str, tracking: dict) -> tuple[float, float]:
    cfg = validate({**raw, "tracking": tracking})
    first: list[float] = []
    t0 = time.monotonic()
    stages.train(cfg, "cond", out=root / name, progress=False,
                 on_log=lambda step, row: first.append(time.monotonic() - t0) if not first else None)
    return first[0], time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout-s", type=float, default=10.0, help="tracking.timeout_s")
    args = ap.parse_args()
    for var in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        os.environ.pop(var, None)
    root = Path(tempfile.mkdtemp(prefix="gdm-bench-tracking-"))
    raw = {**TINY, "data": {"out_dir": str(root / "prepared")}, "pipeline": {"runs_dir": str(root / "runs")}}
    stages.prepare(validate({**raw, "tracking": {"enabled": False}}), progress=False)
    time_stage(raw, root, "warm-up", {"enabled": False})  # imports, first allocations: not counted
    rows = [("tracking off", time_stage(raw, root, "off", {"enabled": False}))]
    for label, start in (("silent server (accepts, never answers)", silent_server),
                         ("server answering HTTP 500", error_server)):
        uri, close = start()
        try:
            rows.append((label, time_stage(raw, root, label.split()[0], {
                "enabled": True, "tracking_uri": uri, "timeout_s": args.timeout_s})))
        finally:
            close()
    print(f"\ntracking.timeout_s = {args.timeout_s:g}; MLflow retry env vars unset; results under {root}")
    print(f"{'condition':<42}{'first step after (s)':>22}{'extra vs off (s)':>18}{'whole stage (s)':>18}")
    base = rows[0][1][0]
    for label, (first, total) in rows:
        print(f"{label:<42}{first:>22.2f}{first - base:>18.2f}{total:>18.2f}")


if __name__ == "__main__":
    main()
