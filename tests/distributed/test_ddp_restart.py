"""Elastic restart through torchrun's rendezvous path (`--rdzv-backend c10d`, as on several hosts):
a rank killed mid-run makes torchrun restart the workers, which resume from the last checkpoint and
finish with the weights of an uninterrupted run, bit for bit (CPU)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch

from gdm.io import load_checkpoint
from tests.distributed.conftest import ddp_env, free_port, torchrun_cmd, wait_for, worker_pids

pytestmark = pytest.mark.distributed


def test_killed_rank_restarts_and_ends_with_the_uninterrupted_weights(ddp_project, two_rank_runs):
    out = ddp_project.root / "restarted"
    rdzv = ("--nnodes=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--max-restarts=1",
            "--monitor-interval=0.2")
    cmd = torchrun_cmd("-m", "gdm", "train", "--params", str(ddp_project.params), "--variant", "cond",
                       "--out", str(out), "--quiet", launcher=rdzv)
    proc = subprocess.Popen(cmd, cwd=ddp_project.root, env=ddp_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = out / "checkpoints" / "ckpt-00000004.pt"
        assert wait_for(first.exists, timeout=300), "the first checkpoint never appeared"
        ranks = worker_pids(proc.pid)
        assert set(ranks) == {0, 1}, f"workers not found under torchrun pid {proc.pid}: {ranks}"
        os.kill(ranks[1], signal.SIGKILL)  # mid-run: 8 of 12 steps are left
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, f"--- stdout\n{stdout}\n--- stderr\n{stderr}"
    resumed = [line for line in stdout.splitlines() if "resumed_from:" in line]
    assert resumed and int(resumed[-1].split(":")[1]) in (4, 8), stdout  # the restarted workers resumed
    a = load_checkpoint(out / "model.pt")
    b = load_checkpoint(two_rank_runs / "unet" / "model.pt")
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in b["ema"]["0.999"]:
        assert torch.equal(a["ema"]["0.999"][k], b["ema"]["0.999"][k]), k
    assert a["world_size"] == 2
