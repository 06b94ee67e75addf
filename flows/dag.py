"""The pipeline as a concurrent DAG on a Prefect task runner (`pipeline.task_runner`).

Every stage is submitted at once with its upstream futures as `wait_for` (the edges of
`gdm.pipeline.stage_graph`), so independent stages run together and the runner, not this module,
decides when: `threads` (one process; the stages' CPU threads and GPUs are Prefect global
concurrency limits on this host) or `dask` (prefect-dask: a LocalCluster of worker processes or
the scheduler at `pipeline.dask_address`; stage needs become Dask worker resources CPU/GPU).
With `pipeline.dispatch: deployments` the heavy stages run as flow runs of the `gdm-stage`
deployment on a work pool instead (flows/stage.py). A failed stage fails only what depends on it:
the independent branches finish, and the flow then fails naming each failed stage and why.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from gdm.config import Config
from gdm.errors import GdmError
from gdm.pipeline import HEAVY_KINDS, Stage, dependants, host_cpus, host_gpus, stage_resources, stage_threads


class StageFailures(GdmError):
    """One or more pipeline stages failed; `failed` maps stage -> reason, `skipped` lists dependants."""

    def __init__(self, failed: dict[str, str], skipped: list[str]):
        self.failed, self.skipped = failed, skipped
        lines = [f"{len(failed)} pipeline stage(s) failed:"] + [f"  {n}: {why}" for n, why in failed.items()]
        if skipped:
            lines.append(f"  not run because an upstream stage failed: {', '.join(skipped)}")
        super().__init__("\n".join(lines))


@dataclass
class DagRun:
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)  # Completed | Cached | Failed | NotRun
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def raise_on_failure(self) -> None:
        if self.failed:
            raise StageFailures(self.failed, self.skipped)


def make_runner(cfg: Config, n_stages: int):
    pc = cfg.pipeline
    if pc.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if pc.dask_address:
            return DaskTaskRunner(address=pc.dask_address)
        keep_malloc_default()
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=dask_cluster_kwargs(cfg))
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=pc.max_parallel or max(1, n_stages))


def keep_malloc_default() -> None:
    """Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536 (config
    distributed.nanny.pre-spawn-environ), so glibc hands freed memory back to the OS at once. PyTorch
    frees and re-allocates its activations every step, and each step then page-faults them in again:
    measured, a digits training step took 92.9 ms in such a worker vs 60.3 ms with glibc's default
    (the whole demo's UNet trainings ran 1.5x slower on the Dask runner). Our LocalCluster workers keep
    glibc's default; a cluster at pipeline.dask_address is started by its owner (README)."""
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


def dask_cluster_kwargs(cfg: Config) -> dict[str, Any]:
    """A LocalCluster of `dask_workers` processes on 127.0.0.1, the host's CPUs (and GPUs) shared among them
    as worker resources. One task at a time per worker; a stage sets its own torch threads there."""
    n = cfg.pipeline.dask_workers
    resources = {"CPU": max(stage_threads(cfg), host_cpus(cfg) // n)}
    gpus = host_gpus(cfg)
    if gpus:
        if gpus < n:
            raise GdmError(f"pipeline.dask_workers {n} > the {gpus} GPU(s) of this host: a LocalCluster worker "
                           "cannot be pinned to a GPU; set pipeline.dask_workers to the GPU count, or start one "
                           "`dask worker --resources GPU=1` per GPU (CUDA_VISIBLE_DEVICES=i) and set pipeline.dask_address")
        resources["GPU"] = 1
    return {"n_workers": n, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
            "dashboard_address": None, "resources": resources}


def _annotations(cfg: Config, stage: Stage):
    """Dask worker resources for this stage (a no-op under the thread runner)."""
    if cfg.pipeline.task_runner != "dask":
        return contextlib.nullcontext()
    import dask

    res = stage_resources(cfg, stage)
    need = {"CPU": res.threads} if cfg.pipeline.dask_address is None else {}
    if res.gpus:
        need["GPU"] = res.gpus
    # Dask runs the higher priority first: the longest trainings before the short ones and the samples
    return dask.annotate(priority=-res.priority, **({"resources": need} if need else {}))


def _reason(future) -> str:
    try:
        exc = future.result(raise_on_failure=False)
    except Exception as err:  # the result itself could not be read
        exc = err
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    return (future.state.message or future.state.name or "failed")[:500]


def run_dag(cfg: Config, stages: list[Stage], parent_run_id: str | None, progress: bool) -> DagRun:
    """Submit `stages` (in an order where upstream comes first) and wait for all of them."""
    from flows.stage import dispatch_task
    from flows.tasks import set_torch_threads, stage_task

    pc = cfg.pipeline
    concurrent = pc.task_runner == "dask" or (pc.max_parallel or len(stages)) > 1
    threads = pc.task_runner == "threads"
    if threads:
        ensure_limits(cfg)
        set_torch_threads(stage_threads(cfg))  # process-wide: every stage of this process shares it
    config = cfg.to_dict()
    run = DagRun()
    names = {s.name for s in stages}
    with make_runner(cfg, len(stages)) as runner:
        futures = {}
        for s in stages:
            ups = [futures[u] for u in s.upstream if u in names]
            remote = pc.dispatch == "deployments" and s.kind in HEAVY_KINDS
            if remote:
                task, params = dispatch_task(s), {"stage_name": s.name, "config": config, "parent_run_id": parent_run_id}
            else:
                task = stage_task(cfg, s)
                params = {"stage_name": s.name, "config": config, "parent_run_id": parent_run_id,
                          "progress": progress and not concurrent, "limits": threads,
                          "own_threads": not threads}
            with _annotations(cfg, s):
                futures[s.name] = runner.submit(task, parameters=params, wait_for=ups)
        for name, fut in futures.items():
            fut.wait()
            state = fut.state
            if state.is_completed():
                run.results[name] = fut.result()
                run.states[name] = state.name or "Completed"
            elif state.is_failed() or state.is_crashed():
                run.failed[name] = _reason(fut)
                run.states[name] = "Failed"
            else:
                run.states[name] = "NotRun"
    run.skipped = sorted(n for n in dependants(stages, set(run.failed)) if n not in run.failed)
    for n in set(names) - set(run.states):
        run.states[n] = "NotRun"
    return run


def ensure_limits(cfg: Config) -> None:
    """This host's CPU/GPU slots as Prefect global concurrency limits (created or resized)."""
    from prefect.client.orchestration import get_client

    from flows.tasks import limit_names, limit_sizes

    with get_client(sync_client=True) as client:
        for name, size in zip(limit_names(), limit_sizes(cfg), strict=True):
            client.upsert_global_concurrency_limit_by_name(name, size)
