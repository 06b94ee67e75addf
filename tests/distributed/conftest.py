"""torchrun on 127.0.0.1 with gloo: launch helpers and one tiny project shared by the distributed tests.

Every launch costs seconds of imports per rank on 2 cores, so the tests launch few jobs and reuse
what they produce (session-scoped `ddp_project`, module-scoped runs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[2]

# 12 steps with a checkpoint every 4 leave the restart test a window to kill a rank mid-run;
# 8 samples in chunks of 2 give each of 2 ranks two chunks.
DDP_PARAMS = {
    "train": {"steps": 12, "batch_size": 16, "checkpoint_every": 4, "keep_checkpoints": 3},
    "classifier_train": {"steps": 4, "batch_size": 16, "checkpoint_every": 2},
    "sample": {"num_samples": 8, "batch_size": 2, "chunk_size": 2, "respacing": "5", "scales": [0.0]},
}


def write_params(root: Path, **sections) -> Path:
    raw = {k: dict(v) for k, v in TINY.items()}
    for k, v in DDP_PARAMS.items():
        raw[k].update(v)
    raw["data"] = {"out_dir": str(root / "prepared"), "name": "digits"}
    raw["pipeline"] = {"runs_dir": str(root / "runs"), "reports_dir": str(root / "reports"),
                       "models": {"cond": {}}}
    raw["eval"] = {"cache_dir": str(root / "cache")}
    raw["tracking"] = {"enabled": False}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1",
               GDM_DIST_TIMEOUT="120", PYTHONUNBUFFERED="1", **extra)
    return env


def torchrun_cmd(*args: str, nproc: int = 2, launcher: tuple[str, ...] | None = None) -> list[str]:
    """`python -m torch.distributed.run` (= torchrun) for `nproc` local ranks on 127.0.0.1."""
    launcher = launcher or ("--master-addr", "127.0.0.1", "--master-port", str(free_port()))
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *launcher, *args]


def run(cmd: list[str], cwd: Path, timeout: float = 300, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run and capture; on failure (if `check`) or timeout the assertion message carries the output."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ddp_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} ran past {timeout} s\n--- stdout\n{out}\n--- stderr\n{err}") from None
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}\n--- stdout\n{out}\n--- stderr\n{err}")
    return res


def worker_pids(agent_pid: int) -> dict[int, int]:
    """{RANK: pid} of the worker processes a torchrun agent started (read from /proc)."""
    found: dict[int, int] = {}
    pending = [agent_pid]
    while pending:
        pid = pending.pop()
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            pending.append(kid)
            try:
                env = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = kid
    return found


def wait_for(predicate, timeout: float, interval: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture(scope="session")
def ddp_project(tmp_path_factory) -> SimpleNamespace:
    """A tiny project: params.yaml and the prepared digits dataset."""
    from gdm.config import load_config
    from gdm.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("ddp")
    params = write_params(root)
    cfg = load_config(params)
    dataset = prepare_dataset(cfg.data)
    return SimpleNamespace(root=root, params=params, cfg=cfg, dataset=Path(dataset))


@pytest.fixture(scope="session")
def two_rank_runs(ddp_project) -> Path:
    """One torchrun job, 2 ranks: ddp_driver.py's UNet, classifier and samples (guided and unguided)."""
    out = ddp_project.root / "two-ranks"
    run(torchrun_cmd(str(ROOT / "tests/distributed/ddp_driver.py"), str(ddp_project.params), str(out)),
        cwd=ddp_project.root)
    return out
