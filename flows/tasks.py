"""One Prefect task that runs any stage of `gdm.pipeline.stage_graph`, cached on input content hashes.

The cache key is the content hash of the stage's command, params slice and dependency files
(`gdm.pipeline.input_hash`); a stage whose outputs are missing is re-run whatever the cache says.
While it runs, a stage holds the resources `gdm.pipeline.stage_resources` declares for it (Prefect
global concurrency limits `gdm-cpu@<host>` / `gdm-gpu@<host>` under the thread runner; the Dask runner
uses worker resources instead) and reports its progress to Prefect: INFO log lines and a progress
artifact per stage.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger, task

from gdm import stages as st
from gdm import stages_upsampling as su
from gdm.config import Config
from gdm.pipeline import (
    HEAVY_KINDS,
    Resources,
    Stage,
    eval_file,
    eval_up_file,
    host_cpus,
    host_gpus,
    input_hash,
    outputs_exist,
    sample_dir,
    sample_up_dir,
    stage_graph,
    stage_resources,
)
from gdm.progress import reporting

RETRIES = {"prepare": 1, "train": 1, "train-classifier": 1, "train-evaluator": 1, "sample": 1, "evaluate": 1,
           "train-upsampler": 1, "sample-up": 1}


def find_stage(cfg: Config, name: str, ablations: bool = True) -> Stage:
    for s in stage_graph(cfg, ablations=ablations):
        if s.name == name:
            return s
    raise KeyError(f"no stage named {name!r} in the pipeline")


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    cfg = Config.model_validate(parameters["config"])
    return f"{parameters['stage_name']}-{input_hash(cfg, find_stage(cfg, parameters['stage_name']))}"


def execute(cfg: Config, stage: Stage, parent_run_id: str | None, progress: bool) -> dict[str, Any]:
    """Run one stage through the same `gdm.stages` function the CLI (and so DVC) calls."""
    a = stage.args
    if stage.kind == "prepare":
        return {"dataset": str(st.prepare(cfg, progress=progress))}
    if stage.kind == "train":
        return st.train(cfg, a["variant"], progress=progress, restart_on_mismatch=True, parent_run_id=parent_run_id,
                        move_aliases=True, low_res=a.get("low_res", False))
    if stage.kind == "train-classifier":
        return st.train_classifier(cfg, progress=progress, restart_on_mismatch=True, parent_run_id=parent_run_id,
                                   move_aliases=True, low_res=a.get("low_res", False))
    if stage.kind == "train-upsampler":
        return su.train_upsampler(cfg, progress=progress, restart_on_mismatch=True, parent_run_id=parent_run_id,
                                  move_aliases=True)
    if stage.kind == "sample-up":
        final, low = su.sample_upsampled(cfg.with_overrides({"sample.sampler": a["sampler"]}), a["variant"],
                                         a["scale"], out=sample_up_dir(cfg, a["variant"], a["sampler"], a["scale"]),
                                         progress=progress, parent_run_id=parent_run_id)
        return {"npz": str(final.npz), "grid": str(final.grid), "low_npz": str(low.npz)}
    if stage.kind == "upsampling-report":
        return {k: str(v) for k, v in su.upsampling_report(cfg, parent_run_id=parent_run_id).items()}
    if stage.kind == "train-evaluator":
        return st.train_evaluator(cfg, progress=progress, parent_run_id=parent_run_id)
    if stage.kind == "sample":
        kind = a.get("guidance", "classifier")
        scfg = cfg.with_overrides({"sample.sampler": a["sampler"], "sample.guidance": kind})
        out = sample_dir(cfg, a["variant"], a["sampler"], a["scale"], kind)
        run = st.sample(scfg, a["variant"], a["scale"], out=out, progress=progress, parent_run_id=parent_run_id)
        return {"npz": str(run.npz), "grid": str(run.grid)}
    if stage.kind == "evaluate":
        ablation = stage.name.startswith("evaluate-ablation")
        kind = a.get("guidance", "classifier")
        out = eval_file(cfg, a["variant"], a["sampler"], a["scale"], ablation, kind)
        samples = sample_dir(cfg, a["variant"], a["sampler"], a["scale"], kind)
        if a.get("upsampled"):
            out = eval_up_file(cfg, a["variant"], a["sampler"], a["scale"])
            samples = sample_up_dir(cfg, a["variant"], a["sampler"], a["scale"])
        m = st.evaluate(cfg, samples, out=out, parent_run_id=parent_run_id, variant=a["variant"], scale=a["scale"],
                        ablation=ablation)
        return {k: v for k, v in m.items() if k != "warnings"}
    if stage.kind in ("report", "ablation-report"):
        written = st.report(cfg, ablations=stage.kind == "ablation-report", parent_run_id=parent_run_id)
        return {k: str(v) for k, v in written.items()}
    raise ValueError(f"unknown stage kind {stage.kind!r}")


# ----------------------------------------------------------------------------- resources
def limit_names(host: str | None = None) -> tuple[str, str]:
    host = host or socket.gethostname()
    return f"gdm-cpu@{host}", f"gdm-gpu@{host}"


def limit_sizes(cfg: Config) -> tuple[int, int]:
    """The slots of this host's two limits: its CPU threads, and its GPUs (at least one slot, so a limit
    exists on a CPU-only host too)."""
    return host_cpus(cfg), max(1, host_gpus(cfg))


def set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class LocalSlots:
    """This process's share of a host resource, handed over at once and in priority order.

    Prefect's global concurrency limits are polled: a stage refused a slot sleeps for the server's
    Retry-After, which grows with the average slot occupancy (up to 30 s when the holders are long
    trainings), so on the 2-core demo a slot stood idle ~11 % of the time. Under the thread runner
    the stages of one flow run first queue here (a freed slot goes at once to the waiting stage with
    the lowest `Resources.priority`, ties in arrival order), then take the Prefect slot, which is then
    free unless another process on the host holds it: the global limit still bounds the host."""

    def __init__(self, capacity: int):
        self.capacity, self.free = capacity, capacity
        self._cv = threading.Condition()
        self._queue: list[tuple[int, int]] = []  # heap of (priority, arrival)
        self._arrivals = itertools.count()

    @contextlib.contextmanager
    def hold(self, n: int, priority: int) -> Iterator[None]:
        n = min(n, self.capacity)
        me = (priority, next(self._arrivals))
        with self._cv:
            heapq.heappush(self._queue, me)
            self._cv.wait_for(lambda: self._queue[0] == me and self.free >= n)
            heapq.heappop(self._queue)
            self.free -= n
            self._cv.notify_all()  # the next in line may fit in what is left
        try:
            yield
        finally:
            with self._cv:
                self.free += n
                self._cv.notify_all()


_local_slots: dict[str, LocalSlots] = {}
_local_lock = threading.Lock()


def local_slots(name: str, capacity: int) -> LocalSlots:
    """The process-wide queue for limit `name` (created on first use; resized when idle)."""
    with _local_lock:
        slots = _local_slots.get(name)
        if slots is None or (slots.capacity != capacity and slots.free == slots.capacity and not slots._queue):
            slots = _local_slots[name] = LocalSlots(capacity)
        return slots


@contextlib.contextmanager
def holding(res: Resources, sizes: tuple[int, int]) -> Iterator[None]:
    """Hold the stage's CPU threads and GPUs: first from this process's queues (priority order, no
    polling), then from this host's Prefect concurrency limits (shared with other processes)."""
    from prefect.concurrency.sync import concurrency

    (cpu, gpu), (cpus, gpus) = limit_names(), sizes
    with contextlib.ExitStack() as stack:
        if res.gpus:
            stack.enter_context(local_slots(gpu, gpus).hold(res.gpus, res.priority))
            stack.enter_context(concurrency(gpu, occupy=res.gpus, strict=True))
        stack.enter_context(local_slots(cpu, cpus).hold(res.threads, res.priority))
        stack.enter_context(concurrency(cpu, occupy=res.threads, strict=True))
        yield


# ------------------------------------------------------------------------------ progress
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:80]


class PrefectProgress:
    """Progress listener (`gdm.progress.reporting`): a progress artifact updated every few seconds
    and an INFO line every 10% (or 60 s), so a long stage is visibly alive in the Prefect UI."""

    def __init__(self, stage_name: str, logger, artifact_every: float = 2.0, log_every: float = 60.0):
        self.stage, self.logger = stage_name, logger
        self.artifact_every, self.log_every = artifact_every, log_every
        self._artifact = None
        self._last_artifact = self._last_log = time.monotonic()
        self._last_decile = -1
        self._t0 = time.monotonic()

    def __call__(self, description: str, done: int, total: int, fields: dict[str, Any]) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        pct = 100.0 * done / total if total else 100.0
        now = time.monotonic()
        try:
            if self._artifact is None:
                self._artifact = create_progress_artifact(pct, key=f"progress-{_slug(self.stage)}",
                                                          description=f"{self.stage}: {description}")
            elif now - self._last_artifact >= self.artifact_every or done >= total:
                update_progress_artifact(self._artifact, pct)
                self._last_artifact = now
        except Exception as exc:  # progress display must never fail a stage
            self.logger.debug("progress artifact not updated: %s", exc)
        decile = int(pct // 10)
        if decile > self._last_decile or now - self._last_log >= self.log_every or done >= total:
            self._last_decile, self._last_log = decile, now
            extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            rate = done / max(now - self._t0, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("nan")
            self.logger.info(f"{description}: {done}/{total} ({pct:.0f}%) {rate:.2f}/s eta {eta:.0f}s {extra}".rstrip())


# ---------------------------------------------------------------------------------- task
@task(name="gdm-stage", task_run_name="{stage_name}", cache_key_fn=_cache_key, persist_result=True)
def run_stage(stage_name: str, config: dict[str, Any], parent_run_id: str | None = None,
              progress: bool = True, limits: bool = False, own_threads: bool = False) -> dict[str, Any]:
    """`limits`: hold the stage's slots of this host's concurrency limits (thread runner);
    `own_threads`: set torch's thread count to the stage's (the process runs one stage at a time)."""
    cfg = Config.model_validate(config)
    stage = find_stage(cfg, stage_name)
    res = stage_resources(cfg, stage)
    logger = get_run_logger()
    # Light stages (prepare, evaluate, reports: seconds, one thread, no GPU) skip the limits: taking a
    # Prefect concurrency slot costs ~2 s per stage, more than they run.
    slots = holding(res, limit_sizes(cfg)) if limits and stage.kind in HEAVY_KINDS else None
    with slots or contextlib.nullcontext():
        if own_threads:
            set_torch_threads(res.threads)
        logger.info(f"{stage_name}: started on {socket.gethostname()} ({res.threads} CPU threads, {res.gpus} GPU)")
        t0 = time.perf_counter()
        with reporting(PrefectProgress(stage_name, logger)):
            result = execute(cfg, stage, parent_run_id, progress)
        result["wall_seconds"] = time.perf_counter() - t0
    logger.info(f"{stage_name}: done in {result['wall_seconds']:.1f} s")
    return result


def stage_task(cfg: Config, stage: Stage):
    """`run_stage` with this stage's retries, forced to re-run when its outputs are missing."""
    return run_stage.with_options(retries=RETRIES.get(stage.kind, 0), retry_delay_seconds=2,
                                  refresh_cache=not outputs_exist(stage))
