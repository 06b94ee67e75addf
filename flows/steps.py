"""Deployment pull step: run a work-pool flow run inside a gdm checkout.

`prefect.yaml` calls `flows.steps.enter_checkout` with `directory: "{{ $GDM_REPO }}"`. Prefect fills
that placeholder on the worker host at run time; when GDM_REPO is unset there, the key is dropped
and the checkout is the directory the worker was started in ($PWD of its shell). Either way the
directory must hold the gdm project (dvc.yaml, params.yaml, flows/), else the run fails at once with
a message that says which directory was tried and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path

MARKERS = ("dvc.yaml", "params.yaml", "flows")


def enter_checkout(directory: str | None = None) -> dict[str, str]:
    chosen = directory or os.environ.get("GDM_REPO") or os.environ.get("PWD") or os.getcwd()
    where = "GDM_REPO" if directory or os.environ.get("GDM_REPO") else "the worker's start directory ($PWD)"
    path = Path(chosen).expanduser().resolve()
    missing = [m for m in MARKERS if not (path / m).exists()]
    if missing:
        raise FileNotFoundError(
            f"gdm work-pool run: {path} (from {where}) is not a gdm checkout (no {', '.join(missing)}). "
            "Start the worker inside a checkout of the repository, or set GDM_REPO to its path on the worker host."
        )
    os.chdir(path)
    return {"directory": str(path)}
