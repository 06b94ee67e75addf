"""`nproc > 1` on one host: a stage re-launches itself through torchrun (PyTorch's own launcher).

`gdm train --nproc 4` (or `train.nproc: 4`, likewise `classifier_train.nproc` and `sample.nproc`)
runs, in a child process,

    python -m torch.distributed.run --standalone --nproc-per-node 4 -m gdm train --params <resolved> ...

and returns the result rank 0 wrote. The resolved config travels as a YAML file, so the child
computes exactly what the caller asked for; `dvc repro` and the Prefect flows call the same stage
functions and so run distributed with no other change. Inside torchrun (`gdm.distributed.launched`)
nothing is re-launched: multi-node jobs call torchrun directly (README: Distributed).

A failing rank ends the job (torchrun stops the others); its message, printed as
`error (rank r/N): ...`, is raised here as the `GdmError` of the stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import yaml

from gdm import distributed
from gdm.errors import GdmError
from gdm.io import read_json, write_json

RESULT_ENV = "GDM_RESULT_FILE"


class LaunchError(GdmError):
    """The torchrun job of a stage failed; the message carries the failing rank's error."""


def wanted(nproc: int) -> bool:
    """Re-launch through torchrun: more than one process asked for and not already inside torchrun."""
    return nproc > 1 and not distributed.launched()


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "gdm", *args]


def child_env(nproc: int, device: str, parent_run_id: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if parent_run_id:
        env["GDM_PARENT_RUN_ID"] = parent_run_id
    if "OMP_NUM_THREADS" not in env and not device.startswith("cuda"):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))  # the cores shared by the ranks
    return env


def check_devices(nproc: int, device: str) -> None:
    import torch

    from gdm.models import resolve_device

    if resolve_device(device).type == "cuda" and torch.cuda.device_count() < nproc:
        raise LaunchError(f"nproc {nproc} asks for one CUDA device per process but this host has "
                          f"{torch.cuda.device_count()}")


def run_stage(cfg, command: str, args: list[str], *, nproc: int, device: str,
              parent_run_id: str | None = None) -> dict[str, Any]:
    """Run `gdm <command> <args>` under torchrun with `cfg` as its params file; rank 0's result dict."""
    check_devices(nproc, device)
    with tempfile.TemporaryDirectory(prefix="gdm-launch-") as tmp:
        params, result = Path(tmp) / "params.yaml", Path(tmp) / "result.json"
        params.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        env = child_env(nproc, device, parent_run_id)
        env[RESULT_ENV] = str(result)
        cmd = torchrun_command(nproc, [command, "--params", str(params), *args])
        rc, errors = _run_streaming(cmd, env)
        if rc != 0 or not result.is_file():
            detail = "\n".join(errors) or "no rank reported an error; see the torchrun output above"
            raise LaunchError(f"gdm {command} with {nproc} processes (torchrun) failed (exit {rc}):\n{detail}")
        return read_json(result)


def _run_streaming(cmd: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run `cmd`, passing its stderr through; return its exit status and the ranks' error messages."""
    errors: deque[str] = deque(maxlen=40)
    in_error = False
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            sys.stderr.write(line)
            in_error = line.startswith("error (rank") or (in_error and line.startswith("  "))
            if in_error:
                errors.append(line.rstrip())
        proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return proc.returncode, list(errors)


def report(result: dict[str, Any]) -> None:
    """Inside a re-launched job, rank 0 hands its result to the launching process."""
    path = os.environ.get(RESULT_ENV)
    if path and distributed.current().is_main:
        write_json(path, result)
