"""The pipeline as a concurrent DAG (flows/dag.py), with fake stages where only the scheduling matters.

`flows.tasks.execute` is replaced by a recorder that sleeps: the runner, the `wait_for` edges, the
concurrency limits and the failure handling are the real ones (thread runner, one Prefect harness).
"""

import threading
import time

import pytest

from flows.dag import StageFailures
from gdm.config import load_config
from tests.flows.conftest import write_params

pytestmark = pytest.mark.usefixtures("prefect_harness")

TRAINS = ("train@cond", "train-classifier", "train-evaluator")


@pytest.fixture()
def recorder(monkeypatch):
    import flows.tasks as ft

    spans: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()
    fail: set[str] = set()
    meet: dict[str, threading.Barrier] = {}  # stages that wait for each other: they pass only if all run at once

    def fake(cfg, stage, parent_run_id, progress):
        t0 = time.monotonic()
        if stage.name in meet:
            meet[stage.name].wait(timeout=120)  # BrokenBarrierError (the stage fails) if they ran one after another
        time.sleep(1.0 if stage.kind.startswith("train") else 0.05)
        with lock:
            spans[stage.name] = (t0, time.monotonic())
        if stage.name in fail:
            raise RuntimeError(f"{stage.name} broke on purpose")
        return {"fake": stage.name}

    monkeypatch.setattr(ft, "execute", fake)
    return spans, fail, meet


def _cfg(tmp_path, mlflow_template_db, sections=None, **pipeline):
    import shutil

    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template_db, db)
    params = write_params(tmp_path, db, pipeline={"cpus": 4, "stage_threads": 1, **pipeline},
                          tracking={"enabled": False}, **(sections or {}))
    return load_config(params)


def _run(cfg, names=None):
    from prefect import flow

    from flows.pipeline import run_stages

    @flow(name="gdm-dag-test")
    def f():
        return run_stages(cfg, names, None, False, ablations=False)

    return f()


def test_independent_stages_run_together_and_after_their_inputs(tmp_path, mlflow_template_db, recorder):
    spans, _, meet = recorder
    together = threading.Barrier(len(TRAINS))  # timing-free: each waits until all three have started
    meet.update(dict.fromkeys(TRAINS, together))
    cfg = _cfg(tmp_path, mlflow_template_db)
    _run(cfg)
    # the three training stages (inputs: prepare only) ran at the same time, not one after another
    assert max(spans[n][0] for n in TRAINS) < min(spans[n][1] for n in TRAINS), {n: spans[n] for n in TRAINS}
    from gdm.pipeline import stage_graph

    for s in stage_graph(cfg, ablations=False, upsampling=False):  # a stage never starts before its inputs are done
        for u in s.upstream:
            assert spans[s.name][0] >= spans[u][1], (s.name, u)


def test_failed_stage_fails_only_its_dependants(tmp_path, mlflow_template_db, recorder):
    spans, fail, _ = recorder
    cfg = _cfg(tmp_path, mlflow_template_db, models={"cond": {}, "uncond": {"unet.num_classes": None}})
    fail.add("train@uncond")
    with pytest.raises(StageFailures) as err:
        _run(cfg)
    e = err.value
    assert set(e.failed) == {"train@uncond"} and "broke on purpose" in e.failed["train@uncond"]
    assert "train@uncond" in str(e) and "broke on purpose" in str(e)
    assert set(e.skipped) == {"sample@uncond-ddim-0.0", "sample@uncond-ddim-2.0", "evaluate@uncond-ddim-0.0",
                              "evaluate@uncond-ddim-2.0", "report"}
    # the independent branch finished
    assert {"sample@cond-ddim-0.0", "evaluate@cond-ddim-2.0", "train-classifier"} <= set(spans)
    assert not set(e.skipped) & set(spans)


def test_single_gpu_slot_serialises_gpu_stages(tmp_path, mlflow_template_db, recorder):
    spans, _, _ = recorder
    # pipeline.gpus 1 with device auto: train@cond and train-classifier each want the one GPU
    auto = {"device": "auto"}
    cfg = _cfg(tmp_path, mlflow_template_db, {"train": auto, "classifier_train": auto}, gpus=1)
    _run(cfg, ["prepare", "train@cond", "train-classifier", "train-evaluator"])
    a, b = sorted((spans["train@cond"], spans["train-classifier"]))
    assert b[0] >= a[1], "two stages held the single GPU at once"
    ev = spans["train-evaluator"]  # no GPU needed: it overlaps one of them
    assert ev[0] < a[1] or ev[0] < b[1]


def test_local_dask_workers_keep_glibc_malloc_default():
    """Dask's nanny would start workers with MALLOC_TRIM_THRESHOLD_=65536, which made every PyTorch
    training step page-fault its activations in again (1.5x slower); the runner's LocalCluster doesn't."""
    import copy
    import os

    import dask
    from distributed import Client, LocalCluster

    from flows.dag import keep_malloc_default

    key = "distributed.nanny.pre-spawn-environ"
    before = copy.deepcopy(dask.config.get(key))
    shipped = [d["distributed"]["nanny"]["pre-spawn-environ"] for d in dask.config.defaults
               if "pre-spawn-environ" in d.get("distributed", {}).get("nanny", {})]
    assert shipped and shipped[0].get("MALLOC_TRIM_THRESHOLD_") is not None  # dask's default, what the fix removes
    try:
        dask.config.set({key: shipped[0]})  # as in a fresh process (another test here may have run the fix)
        keep_malloc_default()
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            env = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert list(env.values()) == [None]
    finally:
        dask.config.set({key: before})
