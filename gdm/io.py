"""Readers that name the file on bad input, atomic writes, hashing and safe checkpoint I/O.

Every artifact is written to a temporary file in the destination directory, flushed and fsync'ed,
then renamed over the target: a crash leaves either the old file or the new one, never half of one.
The temporary file is locked while it is written (`gdm.locks`), so the next run can tell the
leftovers of a killed writer (`sweep_stale`) from a live one. Readers (`read_text`, `read_json`,
`read_yaml`, and any code inside `reading(path)`) turn malformed input into a `GdmError` that names
the file (`gdm.errors.as_gdm_error`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gdm.errors import CheckpointError, ConfigError, GdmError, as_gdm_error, show_path
from gdm.locks import held_lock

MAX_YAML_VALUES = 100_000  # values a YAML document may expand to through aliases (alias bombs)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def reading(path: str | os.PathLike | None, what: str = "") -> Iterator[None]:
    """Turn the expected failure classes raised inside into a `GdmError` naming `path`."""
    try:
        yield
    except GdmError:
        raise
    except Exception as exc:
        mapped = as_gdm_error(exc, path, what)
        if mapped is None:
            raise
        raise mapped from None


def read_text(path: str | os.PathLike, what: str = "") -> str:
    """A UTF-8 text file; a missing file, a directory or non-UTF-8 bytes give a `GdmError`."""
    with reading(path, what):
        return Path(path).read_text(encoding="utf-8")


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    with reading(path, what):
        return json.loads(read_text(path, what))


def read_yaml(path: str | os.PathLike, what: str = "") -> Any:
    return parse_yaml(read_text(path, what), show_path(path))


def parse_yaml(text: str, where: str, limit: int = MAX_YAML_VALUES) -> Any:
    """`yaml.safe_load`, refusing documents whose aliases expand past `limit` values (alias bombs)
    or refer to themselves; errors name `where` and the keys that hold the expansion."""
    import yaml

    with reading(where):
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node, where, limit)
            return loader.construct_document(node)
        finally:
            loader.dispose()


def _check_expansion(root: Any, where: str, limit: int) -> None:
    import yaml

    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(node: Any, key: str) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in busy:
            raise ConfigError(f"{where}: the YAML alias at '{key}' refers to itself (a recursive value); refused")
        busy.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                sub = f"{key}.{k.value}" if key and isinstance(k, yaml.ScalarNode) else str(getattr(k, "value", "?"))
                total += size(k, key) + size(v, sub)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(v, key) for v in node.value)
        busy.discard(id(node))
        sizes[id(node)] = total
        return total

    if size(root, "") <= limit:
        return
    big = []
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            inner = v.value if isinstance(v, yaml.MappingNode) else [(k, v)]
            for k2, v2 in inner:
                if sizes.get(id(v2), 0) > limit // 100:
                    name = k2.value if v2 is v else f"{k.value}.{k2.value}"
                    big.append(f"{name} ({sizes[id(v2)]:.3g} values)")
    raise ConfigError(
        f"{where}: YAML aliases expand this document to more than {limit:,} values (an alias bomb?); refused"
        + (f"; at {', '.join(big[:5])}" if big else "")
    )


def make_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create a directory (and parents); a file in the way gives a `GdmError` naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GdmError(f"{what} {show_path(path)}: exists and is not a directory")
    with reading(path, what):
        path.mkdir(parents=True, exist_ok=True)
    return path


def check_dir_target(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Refuse a directory target that is an existing file, or lies under one, before anything is written."""
    if "://" in str(path):  # an s3:// location: checked by the storage layer
        return path
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise GdmError(f"{what} {show_path(path)}: {show_path(p)} exists and is not a directory")
            break
    return path


def check_file_target(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse a file target that is an existing directory, or lies under a file, before anything is written."""
    path = Path(path)
    if path.is_dir():
        raise GdmError(f"{what} {show_path(path)}: is a directory; give a file path")
    check_dir_target(path.parent, f"{what} {show_path(path)}: parent")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it onto `path`."""
    path = check_file_target(path)
    make_dir(path.parent)
    with reading(path.parent, "writing into"):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp)
    try:
        with held_lock(fd):  # marks the temporary as live: `sweep_stale` leaves it alone
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
            yield tmp
            with reading(tmp, "writing"):
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as pretty, key-sorted JSON (stable bytes for identical content)."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with reading(path), open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (tensors, plain containers, strings, numbers only)."""
    import torch

    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True`: a file that needs pickle code execution is refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError with long texts
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to load: it is not a plain tensor/state-dict file that loads with "
            f"weights_only=True (it may need pickle code execution, or be truncated/corrupt): {first}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj
