"""Advisory locks (flock) that tell live work from the leftovers of a killed process.

- A writer holds a lock on its temporary file or directory while it writes (`held_lock`,
  `locked_temp_dir`); the kernel drops the lock when the process dies, however it dies.
- `sweep_stale(directory, prefix)` removes temporaries whose lock can be taken: their writer is
  gone. A live writer's temporary is left alone.
- `exclusive(path)` claims an output for one process: a second one is refused with a message
  naming the output and the holder's pid (or waits up to `wait_s`). The lock file is removed when
  the claim ends; one left by a killed process is simply reused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from gdm.errors import BusyError, show_path


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


@contextlib.contextmanager
def held_lock(fd: int) -> Iterator[None]:
    """Hold an exclusive lock on an open file descriptor (closed afterwards)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked_temp_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A fresh `.<name>.<random>.tmp` directory beside `final`, locked while in use and removed if the
    block raises (on success the caller has renamed it into place)."""
    import tempfile

    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o755)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        with held_lock(fd):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sweep_stale(directory: str | os.PathLike, prefix: str = "", suffix: str = ".tmp") -> list[Path]:
    """Remove `.<prefix>*<suffix>` temporaries in `directory` that no live process holds locked."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.glob(f".{prefix}*{suffix}")):
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                continue  # a live writer
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str, wait_s: float = 0.0) -> Iterator[Path]:
    """Claim `what` through the lock file `path` for the duration of the block.

    Another process holding it: wait up to `wait_s` seconds, then raise `BusyError` naming `what`,
    the lock file and the holder's pid. The lock file is removed at the end.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if _try_lock(fd):
            try:  # the file we locked must still be the one at `path` (its holder may have removed it)
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
        else:
            holder = _read_pid(fd)
            if time.monotonic() >= deadline:
                os.close(fd)
                raise BusyError(
                    f"{what} is being written by another process{f' (pid {holder})' if holder else ''}, "
                    f"which holds {show_path(path)}; wait for it to finish, or use another --out"
                )
        os.close(fd)
        time.sleep(0.2)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _read_pid(fd: int) -> str | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.isdigit() else None
