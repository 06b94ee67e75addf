"""A run's checkpoint directory: one atomic file per save, the last K kept, resume from newest.

Files are `ckpt-<step>.pt` written with `gdm.io.save_checkpoint` (temp file + fsync + rename):
a crash during a save leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gdm.io import load_checkpoint, save_checkpoint

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


class CheckpointDir:
    def __init__(self, root: str | Path, keep: int):
        self.root = Path(root)
        self.keep = keep

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _NAME.match(p.name)))

    def path(self, step: int) -> Path:
        return self.root / f"ckpt-{step:08d}.pt"

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def load_latest(self) -> dict[str, Any] | None:
        latest = self.latest()
        return load_checkpoint(latest) if latest else None

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        path = self.path(step)
        save_checkpoint(path, payload)
        for old in self.steps()[: -self.keep]:
            self.path(old).unlink(missing_ok=True)
        return path
