"""User-facing errors, and the one place that turns expected failure classes into them.

`GdmError` is raised for bad input (config, files, checkpoints) and bad conditions (a busy output,
a full disk). The CLI prints its message without a traceback and exits with status 2; library
callers can catch it. `as_gdm_error` maps the exceptions that third-party readers raise on
malformed input (decode errors, malformed YAML/JSON/Parquet/npz, decompression bombs, filesystem
collisions) to a `GdmError` naming the file; `gdm.io.reading` applies it around every reader, and
the CLI applies it once more to file-system errors that carry their file name. Anything it does
not recognise is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os


class GdmError(Exception):
    """A problem with user input that the message fully explains."""


class ConfigError(GdmError):
    """Invalid params.yaml / override: the message names the key path, value and what is allowed."""


class DataError(GdmError):
    """A dataset source that cannot be read: the message names the file."""


class CheckpointError(GdmError):
    """A checkpoint that cannot be loaded safely or does not match the model."""


class BusyError(GdmError):
    """Another process holds the output this command would write (the message names it)."""


def _is(exc: BaseException, *names: str) -> bool:
    """isinstance by class name, so that mapping never imports pyarrow/PIL/yaml just to compare."""
    return any(c.__name__ in names for c in type(exc).__mro__)


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + " ..."


def show_path(path: str | os.PathLike | bytes | None) -> str:
    """A path as text that can always be printed (undecodable bytes shown as \\x escapes)."""
    if path is None:
        return "?"
    if isinstance(path, bytes):
        return path.decode("utf-8", "backslashreplace")
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


_OS_MESSAGES = {
    errno.ENOENT: "not found",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOTDIR: "a part of this path is a file, expected a directory",
    errno.EEXIST: "already exists and is not a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links (a link loop?)",
    errno.EDQUOT: "disk quota exceeded",
}


def as_gdm_error(exc: BaseException, path: str | os.PathLike | None = None, what: str = "") -> GdmError | None:
    """A `GdmError` naming `path` (or the file the exception names) for an expected failure class,
    or None when `exc` is not one of them (a bug: let it propagate with its traceback)."""
    if isinstance(exc, GdmError):
        return exc
    where = show_path(path if path is not None else getattr(exc, "filename", None))
    label = f"{what} {where}".strip() if what else where
    if isinstance(exc, UnicodeDecodeError):
        bad = exc.object[exc.start : exc.start + 4]
        return DataError(f"{label}: not UTF-8 text (bytes {bad!r} at offset {exc.start}); save it as UTF-8")
    if isinstance(exc, UnicodeEncodeError):
        bad = exc.object[exc.start : exc.end]
        shown = os.fsencode(bad).decode("utf-8", "backslashreplace") if isinstance(bad, str) else repr(bad)
        return DataError(f"{label}: holds a name that is not valid UTF-8 ({shown}); rename it")
    if _is(exc, "YAMLError"):
        return ConfigError(f"{label}: not valid YAML: {' '.join(str(exc).split())[:400]}")
    if _is(exc, "JSONDecodeError"):
        return DataError(f"{label}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                         "the file is corrupt: restore it or rerun the command that writes it")
    if _is(exc, "DecompressionBombError"):
        return DataError(f"{label}: image too large: {_first_line(exc)} (refused as a possible decompression "
                         "bomb; raise data.max_image_pixels if the image is genuine)")
    if _is(exc, "ArrowException", "ArrowInvalid", "ArrowIOError"):
        return DataError(f"{label}: corrupt or truncated Parquet data ({_first_line(exc)}); "
                         "rerun `gdm prepare` to rebuild the dataset")
    if _is(exc, "BadZipFile"):
        return DataError(f"{label}: not a valid zip/npz file ({_first_line(exc)})")
    if _is(exc, "UnpicklingError"):
        return DataError(f"{label}: refused: needs pickle to load, or is corrupt ({_first_line(exc)})")
    if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
        return DataError(f"{label}: holds an object array, which needs pickle (code execution) to load; "
                         "refused: store plain numeric arrays")
    if isinstance(exc, RecursionError):
        return DataError(f"{label}: nested too deeply to read")
    if isinstance(exc, EOFError):
        return DataError(f"{label}: ends unexpectedly (truncated file?)")
    if isinstance(exc, OSError) and exc.errno in _OS_MESSAGES:
        named = show_path(getattr(exc, "filename", None) or path)
        if getattr(exc, "filename2", None):
            named += f" -> {show_path(exc.filename2)}"
        prefix = f"{what} {named}".strip() if what else named
        return GdmError(f"{prefix}: {_OS_MESSAGES[exc.errno]}")
    return None
