"""A run's checkpoint directory: one atomic file per save, the last K kept, resume from newest.

Files are `ckpt-<step>.pt` written with `gdm.io.save_checkpoint` (temp file + fsync + rename):
a crash during a save leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gdm.errors import CheckpointError
from gdm.io import load_checkpoint, save_checkpoint
from gdm.locks import sweep_stale

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
        """The newest checkpoint; one holding NaN/inf weights (model, EMA) is refused, naming the tensor."""
        from gdm.models import check_finite

        latest = self.latest()
        if latest is None:
            return None
        state = load_checkpoint(latest)
        check_finite(state.get("model") or {}, latest, "weight")
        for rate, ema in (state.get("ema") or {}).items():
            check_finite(ema, latest, f"EMA {rate} weight")
        return state

    def kept_message(self, every: int) -> str:
        latest = self.latest()
        if latest is None:
            return f"No checkpoint had been written yet (one every {every} steps), so none is kept."
        return f"The last good checkpoint is kept: {latest}."

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        path = self.path(step)
        save_checkpoint(path, payload)
        for old in self.steps()[: -self.keep]:
            self.path(old).unlink(missing_ok=True)
        return path

    def archive(self) -> Path | None:
        """Move existing checkpoints aside (`checkpoints.replaced-<n>`): a fresh run loses nothing."""
        if not self.steps():
            return None
        n = 1
        while (dest := self.root.with_name(f"{self.root.name}.replaced-{n}")).exists():
            n += 1
        self.root.rename(dest)
        return dest

    def resume_state(self, fingerprint: dict[str, Any], *, resume: bool, restart_on_mismatch: bool,
                     max_step: int) -> dict | None:
        """The newest checkpoint to continue from, or None to start fresh.

        A checkpoint made with a different fingerprint (the config keys and data that shape the run)
        is never resumed silently: it raises, or with `restart_on_mismatch` is archived.
        """
        if not resume:
            self.archive()
            return None
        state = self.load_latest()
        if state is None:
            return None
        old = state.get("fingerprint", {})
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if not diff and int(state["step"]) <= max_step:
            return state
        if restart_on_mismatch:
            self.archive()
            return None
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff[:6])
        if not diff:
            shown = f"it is at step {state['step']}, past the {max_step} steps asked for"
        raise CheckpointError(
            f"{self.latest()} was made with a different configuration ({shown}); refusing to resume it. "
            "Use --no-resume to start afresh (the old checkpoints are kept as checkpoints.replaced-N)."
        )


# Keys outside the trainer's own sections that change its batches (the reader's order and augmentation).
READER_KEYS = ("data.random_flip", "data.shuffle_window")


def fingerprint(flat_config: dict[str, Any], sections: tuple[str, ...], exclude: set[str],
                data_hash: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config keys that shape a training run (`section.key` -> value, plus `keys`) and the data's content hash."""
    fp = {k: v for k, v in flat_config.items() if (k.split(".")[0] in sections or k in keys) and k not in exclude}
    fp["data.content_hash"] = data_hash
    return fp


def resume_on_every_rank(ckpts: CheckpointDir, world, fingerprint: dict[str, Any], *, resume: bool,
                         restart_on_mismatch: bool, max_step: int) -> dict | None:
    """`resume_state` decided once, by rank 0 (which alone may archive); every rank loads that checkpoint.

    A refusal on rank 0 stops every rank with rank 0's message (no rank waits in a collective).
    Ranks on other nodes read the same file: the run directory must be on storage they all see.
    """
    from gdm.distributed import DistributedError

    state = None

    def decide() -> int | None:
        nonlocal state
        state = ckpts.resume_state(fingerprint, resume=resume, restart_on_mismatch=restart_on_mismatch,
                                   max_step=max_step)
        return None if state is None else int(state["step"])

    step = world.on_main(decide, "the resume decision")
    if world.is_main or step is None:
        return state
    path = ckpts.path(step)
    if not path.is_file():
        raise DistributedError(
            f"rank {world.rank} cannot see {path}, the checkpoint rank 0 resumes from: every node needs the "
            "run directory on shared storage"
        )
    return load_checkpoint(path)


def begin_run(world, reader, start: int, on_start, run_dir, ckpts: CheckpointDir) -> None:
    """Both trainers' last step before their first write: read the first batch (a corrupt shard or image is
    refused without debris; with a small split all of it is read and cached here), then, on rank 0 only,
    `on_start` (config.yaml etc.) and the sweep of a killed run's temporaries (a live writer's are locked)."""
    reader.batch(start)
    if world.is_main:
        if on_start is not None:
            on_start()
        sweep_stale(run_dir)
        sweep_stale(ckpts.root, "ckpt-")
