"""Safe first contact with a tracking backend (no mlflow import here).

- `check_store`: a `sqlite:///` URI must name a new/empty file or an MLflow store. Another
  application's database is refused, never given MLflow's tables.
- `creating_store`: the first process to use a fresh SQLite store migrates it while holding a lock
  on the store's directory; concurrent first users wait for it instead of racing on the migration.
- `probe_server`: an http(s) server gets `timeout_s` seconds, all told, to answer a real request
  (not just to accept the connection); silence, a refused connection or an HTTP 5xx fails at once,
  so the caller goes on untracked instead of sitting in MLflow's retries (~20 min per process).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gdm.errors import ConfigError, show_path

SQLITE_MAGIC = b"SQLite format 3\x00"
MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (None for other schemes and in-memory stores)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if not rest.startswith("///"):
        return None
    path = unquote(rest[3:].split("?", 1)[0])
    return Path(path) if path and path != ":memory:" else None


def check_store(uri: str) -> None:
    """Refuse a SQLite file that exists and is not an MLflow store (or not a database at all)."""
    path = sqlite_path(uri)
    if path is None or not path.exists():
        return
    where = f"tracking.tracking_uri {uri}"
    if not path.is_file():
        raise ConfigError(f"{where}: {show_path(path)} is not a file")
    if path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise ConfigError(f"{where}: {show_path(path)} is not a SQLite database; point the URI at an MLflow "
                          "store or at a new file")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{where}: {show_path(path)} cannot be read as SQLite ({exc})") from None
    if tables and not MLFLOW_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:6]) + (" ..." if len(tables) > 6 else "")
        raise ConfigError(
            f"{where}: {show_path(path)} is the database of another application (tables: {shown}), not an "
            "MLflow store; refusing to add MLflow's tables to it. Point tracking.tracking_uri at a new file"
        )


def is_new_store(uri: str) -> bool:
    path = sqlite_path(uri)
    return path is not None and (not path.exists() or path.stat().st_size == 0)


@contextlib.contextmanager
def creating_store(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on the store's directory while a fresh SQLite store is created."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def probe_server(tracking_uri: str, timeout: float = 10.0) -> None:
    """Within `timeout` seconds in all, an http(s) tracking server must answer a request with a status
    below 500; else `ConnectionError` (the caller goes on untracked)."""
    import http.client
    import ssl

    url = urlsplit(tracking_uri)
    if url.scheme not in ("http", "https") or not url.hostname:
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    path = url.path.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    start = time.monotonic()
    if url.scheme == "https":
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        ctx = ssl._create_unverified_context() if insecure else ssl.create_default_context()
        conn = http.client.HTTPSConnection(url.hostname, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(url.hostname, port, timeout=timeout)
    try:
        conn.connect()
        conn.sock.settimeout(max(0.05, timeout - (time.monotonic() - start)))  # one budget for the whole exchange
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        resp.read(1 << 16)
        status = resp.status
    except TimeoutError:
        raise ConnectionError(f"{url.hostname}:{port} accepted no request or sent no answer within {timeout:g} s "
                              "(tracking.timeout_s)") from None
    except OSError as exc:
        raise ConnectionError(f"cannot connect to {url.hostname}:{port} ({exc})") from exc
    except http.client.HTTPException as exc:
        raise ConnectionError(f"{url.hostname}:{port} did not answer as an HTTP server ({exc!r})") from exc
    finally:
        conn.close()
    if status >= 500:
        raise ConnectionError(f"{url.hostname}:{port} answered HTTP {status} (server error) after "
                              f"{time.monotonic() - start:.1f} s")


def bound_http_retries(timeout_s: float) -> None:
    """Later requests: MLflow's defaults (120 s read timeout, 7 retries with backoff) would let a server
    that falls silent mid-run hold a stage for ~20 minutes; bound them unless the user set them."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(60.0, timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
