"""MLflow runs that never cost a training run.

`Tracker` wraps an `MlflowClient` (explicit run ids, no fluent global state, so runs in threads and
processes are safe). The first backend failure (unreachable server, broken database, missing
mlflow) is reported once through `warn`, and from then on every call is a no-op: the caller keeps
going with its local outputs. A request the backend *rejects* (e.g. re-logging a param with a new
value, an invalid metric name) skips only that call and keeps tracking on.
"""

from __future__ import annotations

import json
import numbers
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from gdm.config import TrackingConfig
from gdm.errors import ConfigError, GdmError
from gdm.tracking.store import bound_http_retries, check_store, creating_store, probe_server, sqlite_path

# MLflow's limits (mlflow.utils.validation), restated so importing this module stays cheap.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_ID_TAG = "gdm.run_id"
# The MLflow UI opens an experiment on its GenAI pages unless this tag says it holds model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# Error codes meaning "this one request was bad", not "the backend is broken".
_REJECTED = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS"}


def default_warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def make_client(tracking_uri: str, timeout_s: float = 10.0) -> Any:
    """An `MlflowClient` bound to `tracking_uri` (the registry lives there too unless
    MLFLOW_REGISTRY_URI says otherwise), after a bounded first contact (`gdm.tracking.store`): a
    foreign SQLite file is refused, a silent or failing server fails within `timeout_s`, a fresh
    SQLite store is migrated by one process at a time. mlflow is imported here, lazily: a disabled
    tracker never pays its import time."""
    check_store(tracking_uri)
    probe_server(tracking_uri, timeout_s)
    bound_http_retries(timeout_s)
    from mlflow import MlflowClient

    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
    if sqlite_path(tracking_uri) is None:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    with creating_store(tracking_uri):  # concurrent first users wait for one migration, not race on it
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)  # builds the store
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)  # the registry's store too
    return client


def error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def _short(exc: BaseException, limit: int = 400) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + " ..."


class Tracker:
    """MLflow client wrapper that never loses training: if the backend is unreachable or errors,
    it warns ONCE (naming the tracking URI and the error), switches to degraded mode (all calls
    no-ops) and the caller carries on with its local outputs."""

    def __init__(
        self,
        cfg: TrackingConfig,
        *,
        warn: Callable[[str], None] = default_warn,
        artifact_location: str | Path | None = None,
    ):
        self.cfg = cfg
        self.artifact_location = None if artifact_location is None else str(artifact_location)
        self._warn = warn
        self._degraded = False
        self._client: Any = None
        self._experiment_id: str | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.cfg.enabled and not self._degraded

    # -- failure handling ------------------------------------------------------------------
    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one backend call; None when inactive, rejected, or failed (then degrade). A `GdmError`
        (a setting that cannot be honoured) is raised: the user must fix it, not lose tracking."""
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except GdmError:
            raise  # a configuration error (e.g. a foreign SQLite file) is refused, not tracked around
        except Exception as exc:
            if error_code(exc) in _REJECTED:
                self._warn(f"MLflow rejected {what}: {_short(exc)}; skipped, tracking continues")
            else:
                self._degrade(what, exc)
            return None

    def _degrade(self, what: str, exc: BaseException) -> None:
        with self._lock:
            if self._degraded:
                return
            self._degraded = True
        self._warn(
            f"MLflow tracking at '{self.cfg.tracking_uri}' failed during {what} ({_short(exc)}). "
            "Tracking is off for the rest of this process; training continues and all outputs "
            "are still written locally. Check tracking.tracking_uri or set tracking.enabled: false."
        )

    # -- client and experiment ---------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.cfg.tracking_uri, self.cfg.timeout_s)
        return self._client

    def _ensure_experiment(self) -> str:
        with self._lock:  # one creator per process; other processes race on the unique name
            if self._experiment_id is None:
                self._experiment_id = self._get_or_create_experiment()
            return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        name = self.cfg.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, artifact_location=self.artifact_location,
                                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except Exception as exc:
                if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = self.client.get_experiment_by_name(name)  # created concurrently
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        self._check_artifact_location(exp)
        if EXPERIMENT_KIND_TAG not in exp.tags:  # experiments made before gdm set the kind
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id

    def _check_artifact_location(self, exp: Any) -> None:
        """MLflow fixes an experiment's artifact location when it is created: a different
        `tracking.artifact_location` for an existing experiment would be silently ignored."""
        if self.artifact_location is None or same_location(self.artifact_location, exp.artifact_location):
            return
        raise ConfigError(
            f"tracking.artifact_location is '{self.artifact_location}' but MLflow experiment "
            f"'{exp.name}' (in {self.cfg.tracking_uri}) already stores its artifacts at "
            f"'{exp.artifact_location}', and MLflow cannot move an existing experiment. Use a new "
            f"tracking.experiment name for the new location, or set tracking.artifact_location back "
            f"to '{exp.artifact_location}' (or null)."
        )

    # -- runs -------------------------------------------------------------------------------
    def start_run(
        self,
        name: str,
        *,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> RunHandle:
        """Open a run (a child of `parent_run_id` when given); a no-op handle when inactive."""

        def _start() -> str:
            all_tags = {k: _tag_value(v) for k, v in (tags or {}).items()}
            if parent_run_id:
                all_tags[PARENT_RUN_TAG] = parent_run_id
            run = self.client.create_run(self._ensure_experiment(), tags=all_tags, run_name=name)
            return run.info.run_id

        return RunHandle(self, self.call(f"start_run('{name}')", _start))


class RunHandle:
    """One MLflow run. Every method is a no-op when `id` is None or the tracker is degraded."""

    def __init__(self, tracker: Tracker | None, run_id: str | None):
        self.tracker = tracker
        self.id = run_id
        self._ended = False

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.id is None or self.tracker is None:
            return None
        return self.tracker.call(what, fn, *args, **kwargs)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Values as strings (lists/dicts as JSON), truncated to MLflow's 6000 characters."""
        items = [(str(k), _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self._call("log_params", self._log_batch, params=items[i : i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numeric values only (None and non-numbers are skipped); `step` defaults to 0."""
        stamp = int(time.time() * 1000)
        values = {str(k): _metric_value(v) for k, v in metrics.items()}
        rows = [(k, v, stamp, int(step or 0)) for k, v in values.items() if v is not None]
        for i in range(0, len(rows), METRICS_PER_BATCH):
            self._call("log_metrics", self._log_batch, metrics=rows[i : i + METRICS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [(str(k), _tag_value(v)) for k, v in tags.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self._call("set_tags", self._log_batch, tags=items[i : i + PARAMS_PER_BATCH])

    def _log_batch(
        self, params: Sequence = (), metrics: Sequence = (), tags: Sequence = ()
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        self.tracker.client.log_batch(
            self.id,
            metrics=[Metric(k, v, ts, s) for k, v, ts, s in metrics],
            params=[Param(k, v) for k, v in params],
            tags=[RunTag(k, v) for k, v in tags],
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file goes to `<artifact_path>/<file name>`; a directory's *contents* go under
        `artifact_path` (MLflow's convention), so a registered model folder keeps its name."""
        p = Path(path)
        if self.id is None or self.tracker is None or not self.tracker.active:
            return
        if not p.exists():
            self.tracker._warn(f"log_artifact: '{p}' does not exist; skipped")
            return

        def _log() -> None:
            client = self.tracker.client
            log = client.log_artifacts if p.is_dir() else client.log_artifact
            log(self.id, str(p), artifact_path)

        self._call(f"log_artifact('{p}')", _log)

    def log_dict(self, obj: Mapping[str, Any], name: str) -> None:
        """`obj` as a JSON (or YAML, by the file suffix) artifact named `name`."""
        self._call(f"log_dict('{name}')", lambda: self.tracker.client.log_dict(self.id, obj, name))

    def system_metrics(self, interval: float | None = None) -> Any:
        """Context manager: CPU/memory/disk/network (and GPU, with nvidia-ml-py) as `system/...` metrics
        of this run while the block runs, every `tracking.system_metrics_interval` seconds."""
        import contextlib

        cfg = self.tracker.cfg if self.tracker else None
        if self.id is None or cfg is None or not self.tracker.active or not cfg.system_metrics:
            return contextlib.nullcontext()
        return _SystemMetrics(self, interval or cfg.system_metrics_interval)

    def log_sampler_model(self, unet: str | Path, artifact_path: str, sample_cfg: Any) -> None:
        """The UNet checkpoint as an MLflow pyfunc model (checkpoint + sampler, with a signature) under
        `artifact_path`, loadable with `mlflow.pyfunc.load_model`."""
        if self.id is None or self.tracker is None or not self.tracker.active:
            return

        def _log() -> None:
            import tempfile

            from gdm.io import load_checkpoint
            from gdm.tracking.pyfunc import save_sampler_model

            kw = load_checkpoint(unet)["model_kwargs"]
            shape = (int(kw["image_size"]), int(kw["image_size"]), int(kw["in_channels"]))
            with tempfile.TemporaryDirectory() as tmp:
                folder = save_sampler_model(Path(unet), sample_cfg, shape, Path(tmp) / "model")
                self.tracker.client.log_artifacts(self.id, str(folder), artifact_path)

        self._call(f"log_sampler_model('{unet}')", _log)

    def end(self, status: str = "FINISHED") -> None:
        if self._ended:
            return
        self._ended = True
        self._call("end", lambda: self.tracker.client.set_terminated(self.id, status))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        return False  # re-raise

    def register_model(self, name: str, artifact_path: str, aliases: Sequence[str]) -> str | None:
        """Register `runs:/<id>/<artifact_path>` as a new version of `name` (created if missing),
        point each alias at it, tag it with the run id. Returns the version, or None when
        registration is off (tracking.register_models) or tracking is inactive."""
        if self.tracker is None or not self.tracker.cfg.register_models:
            return None

        def _register() -> str:
            client = self.tracker.client
            try:
                client.create_registered_model(name)
            except Exception as exc:
                if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
            source = f"runs:/{self.id}/{artifact_path.strip('/')}"
            mv = client.create_model_version(
                name, source, run_id=self.id, tags={RUN_ID_TAG: self.id}
            )
            for alias in aliases:
                client.set_registered_model_alias(name, alias, mv.version)
            return str(mv.version)

        return self._call(f"register_model('{name}')", _register)


class _SystemMetrics:
    def __init__(self, run: RunHandle, interval: float):
        self.run, self.interval, self.monitor = run, interval, None

    def __enter__(self) -> Self:
        def _start() -> Any:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run.id, sampling_interval=self.interval,
                                           tracking_uri=self.run.tracker.cfg.tracking_uri)
            monitor.start()
            return monitor

        self.monitor = self.run._call("system metrics", _start)
        return self

    def __exit__(self, *exc: object) -> bool:
        if self.monitor is not None:
            self.run._call("system metrics", self.monitor.finish)
        return False


def same_location(a: str, b: str) -> bool:
    """Two artifact locations name the same place (file:// URIs and plain paths compared resolved)."""

    def norm(x: str) -> str:
        x = str(x).rstrip("/")
        x = x.removeprefix("file://")
        if "://" not in x:
            return str(Path(x).expanduser().resolve())
        return x

    return norm(a) == norm(b)


# ------------------------------------------------------------------------------- values
def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple, dict)):
        text = json.dumps(v, sort_keys=True, default=str)
    else:
        text = str(v)
    return text[:MAX_PARAM_VALUE]


def _tag_value(v: Any) -> str:
    return str(v)[:MAX_TAG_VALUE]


def _metric_value(v: Any) -> float | None:
    """A float for real numbers (also numpy scalars, 1-element tensors); None (skipped) else."""
    if hasattr(v, "item") and not isinstance(v, numbers.Number):
        try:
            v = v.item()
        except (ValueError, RuntimeError, TypeError):
            return None
    return float(v) if isinstance(v, numbers.Real) else None
