"""Data-parallel execution under torchrun: the process group, this process's rank, and collectives.

`init(device)` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
joins the process group: NCCL when the device is CUDA, gloo on CPU, with a timeout
(`GDM_DIST_TIMEOUT` seconds, default 600) so a rank that died or raised cannot leave the others
hanging in a collective. Without torchrun it returns the single-process world (rank 0 of 1) whose
collectives are no-ops: the trainers and the sampler run the same code for any world size.

Only rank 0 writes shared files (checkpoints, metrics, MLflow, sample npz); multi-node jobs need
their run and sample directories on storage every node sees (NFS, a shared volume).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from gdm.errors import GdmError

TIMEOUT_ENV = "GDM_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(GdmError):
    """The distributed job is set up wrongly (world size, devices, a rank that cannot see a file)."""


def launched() -> bool:
    """True inside a process started by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank in [0, size), local_rank on its host."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    comm_device: str = "cpu"  # where collectives run: the CUDA device under NCCL, else the CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives really communicate."""
        return self.size > 1

    def device(self, name: str) -> torch.device:
        """The device of `name` ('auto', 'cpu', 'cuda', 'cuda:K') for this rank: CUDA ranks use cuda:LOCAL_RANK."""
        from gdm.models import resolve_device

        dev = resolve_device(name)
        if dev.type != "cuda" or not self.active:
            return dev
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise DistributedError(
                f"rank {self.rank} has LOCAL_RANK {self.local_rank} but this host has {count} CUDA device(s): "
                f"start at most {count} processes per node (torchrun --nproc-per-node {count})"
            )
        return torch.device("cuda", self.local_rank)

    # -- collectives (no-ops on one process) ---------------------------------------------------
    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (in place; returned for chaining)."""
        if self.active:
            buf = values.to(self.comm_device)
            torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
            values.copy_(buf)
        return values

    def all_gather_cat(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `values` (dim 0) in rank order; lengths may differ between ranks."""
        if not self.active:
            return values
        n = torch.tensor([values.shape[0]], device=self.comm_device)
        sizes = [torch.zeros_like(n) for _ in range(self.size)]
        torch.distributed.all_gather(sizes, n)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype, device=self.comm_device)
        padded[: values.shape[0]] = values
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        torch.distributed.all_gather(parts, padded)
        out = torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])
        return out.to(values.device)

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's `obj` on every rank (small picklable values: paths, step numbers, lists)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], Any], what: str) -> Any:
        """`fn()` on rank 0 and its (small, picklable) result on every rank.

        If it raises on rank 0, rank 0 re-raises it and every other rank raises a `DistributedError`
        quoting it, at once: no rank is left waiting in a collective for a rank that failed.
        """
        if not self.active:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except BaseException as exc:
                self.broadcast_object(("error", f"{type(exc).__name__}: {exc}"))
                raise
        kind, value = self.broadcast_object(outcome)
        if kind == "error":
            raise DistributedError(f"stopped because rank 0 failed during {what}: {value}")
        return value

    def check_same(self, tensors: dict[str, torch.Tensor], what: str) -> None:
        """Raise unless every rank holds the same values (float64 sums of each tensor compared exactly).

        Cheap (one small all-gather); used at checkpoints to prove that weights and EMA agree.
        """
        if not self.active:
            return
        names = sorted(tensors)
        sums = torch.stack([tensors[k].detach().double().sum().to(self.comm_device) for k in names])
        gathered = [torch.empty_like(sums) for _ in range(self.size)]
        torch.distributed.all_gather(gathered, sums)
        for r, other in enumerate(gathered):
            if not torch.equal(other, gathered[0]):
                bad = [names[i] for i in torch.nonzero(other != gathered[0]).flatten().tolist()]
                raise DistributedError(f"{what}: rank {r} differs from rank 0 in {bad[:5]} (ranks out of sync)")

    def share(self, n: int) -> range:
        """This rank's contiguous share of n items (positions lo..hi-1; sizes differ by at most one)."""
        return shard(n, self.rank, self.size)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DistributedDataParallel around `model` when there are several ranks, else the model itself."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def shard(n: int, rank: int, size: int) -> range:
    """Positions of the `rank`-th of `size` contiguous, near-equal parts of range(n): the reader's
    `gdm.data.order.rank_slice`, so a rank's draws match the rows it reads."""
    from gdm.data.order import rank_slice

    sl = rank_slice(n, rank, size)
    return range(sl.start, sl.stop)


def accumulate(model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's `no_sync` for every micro-batch but the last (gradients all-reduced once per step)."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


_WORLD: World | None = None


def init(device: str = "auto") -> World:
    """Join torchrun's process group once per process (NCCL for CUDA, gloo for CPU); idempotent.

    Outside torchrun: the single-process world.
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if not launched():
        _WORLD = World()
        return _WORLD
    env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE")}
    try:
        rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise DistributedError(f"torchrun environment is malformed: {env}") from None
    world = World(rank, size, local)
    if size > 1 and not torch.distributed.is_initialized():
        dev = world.device(device)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            world = World(rank, size, local, comm_device=str(dev))
        timeout = datetime.timedelta(seconds=timeout_seconds())
        store, rank, size = next(torch.distributed.rendezvous("env://", timeout=timeout))
        # torchrun's agent keeps one store across elastic restarts: the new workers could read the
        # addresses the previous attempt's (dead) ranks published and fail with "Connection refused"
        # (seen with torch 2.14 and gloo, about one restart in two). Each attempt gets its own keys.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = torch.distributed.PrefixStore(f"gdm/attempt-{attempt}", store)
        torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout,
                                             device_id=dev if dev.type == "cuda" else None)
        atexit.register(shutdown)
    _WORLD = world
    return world


def current() -> World:
    """The world this process joined (the single-process world if `init` was not called)."""
    return _WORLD or World()


def shutdown() -> None:
    global _WORLD
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _WORLD = None


@contextlib.contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the body first (e.g. creating shared files), the others after it."""
    if not world.is_main:
        world.barrier()
    yield
    if world.is_main:
        world.barrier()
