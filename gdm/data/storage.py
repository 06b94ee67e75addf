"""Where prepared datasets live: a local folder or an `s3://bucket/prefix`, through pyarrow.fs.

`location(url)` gives a `Location`: a pyarrow FileSystem plus a base path, with the few operations
the data layer needs (read/write whole objects, open a random-access file for Parquet, list,
delete). Local paths use `LocalFileSystem`; `s3://` uses `pyarrow.fs.S3FileSystem`, configured the
standard AWS way and nothing hand-signed: credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
(or ~/.aws, an instance role, ...), region from AWS_DEFAULT_REGION/AWS_REGION, and the endpoint from
AWS_ENDPOINT_URL (MinIO, a local S3 API server) or AWS itself when unset.

Why pyarrow.fs rather than fsspec/s3fs: the Parquet reader is pyarrow's, and with its own
filesystem it issues ranged GETs for exactly the row groups it needs (no Python-level buffering
layer); it has no asyncio event loop, so DataLoader workers forked from a process that already
used S3 keep working; and it is a dependency we have anyway.

Storage errors become `DataError`s that name the URL and the likely cause (endpoint unreachable,
bucket missing, access denied) instead of an AWS SDK message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from gdm.errors import DataError


def is_s3(url: str | os.PathLike) -> bool:
    return str(url).startswith("s3://")


def join(base: str | os.PathLike, *names: str) -> str:
    """`base/name/...` for a local path or an s3:// URL (a URL keeps its scheme)."""
    if is_s3(base):
        return "/".join([str(base).rstrip("/"), *names])
    return str(Path(base, *names))


def _describe(url: str, exc: BaseException) -> str:
    text = str(exc)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    where = f" (AWS_ENDPOINT_URL={endpoint})" if endpoint else " (AWS S3: AWS_ENDPOINT_URL is not set)"
    if any(s in text for s in ("NETWORK_CONNECTION", "Could not connect", "Couldn't resolve", "Connection refused",
                                "curlCode: 6", "curlCode: 7", "curlCode: 28", "Timeout")):
        return f"{url}: S3 endpoint unreachable{where}: {text.splitlines()[0]}"
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        bucket = url[len("s3://"):].split("/", 1)[0]
        return f"{url}: the S3 bucket {bucket!r} does not exist{where}; create it first (e.g. `aws s3 mb s3://{bucket}`)"
    if any(s in text for s in ("ACCESS_DENIED", "AccessDenied", "Access Denied", "INVALID_ACCESS_KEY",
                                "SIGNATURE_DOES_NOT_MATCH", "HTTP response code: 403")):
        return (f"{url}: access denied by S3{where}; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the "
                f"profile/role) and the bucket policy: {text.splitlines()[0]}")
    return f"{url}: {type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def storage_error(url: str, exc: BaseException) -> DataError:
    return DataError(_describe(url, exc))


@dataclass
class Location:
    """A folder-like place: `fs` + `path` (no trailing slash); `url` is how the user spells it."""

    url: str
    fs: pafs.FileSystem
    path: str

    @property
    def remote(self) -> bool:
        return is_s3(self.url)

    def child(self, *names: str) -> Location:
        return Location(join(self.url, *names), self.fs, "/".join([self.path, *names]))

    def _p(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    def _u(self, name: str) -> str:
        return join(self.url, name) if name else self.url

    def check_bucket(self) -> None:
        """For s3:// locations: raise a DataError naming the bucket when it does not exist (or is unreachable)."""
        if not self.remote:
            return
        bucket = self.path.split("/", 1)[0]
        try:
            missing = self.fs.get_file_info(bucket).type == pafs.FileType.NotFound
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(self.url, exc) from None
        if missing:
            raise DataError(_describe(self.url, OSError("NO_SUCH_BUCKET")))

    def info(self, name: str = "") -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self._p(name))
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(self._u(name), exc) from None

    def exists(self, name: str = "") -> bool:
        return self.info(name).type != pafs.FileType.NotFound

    def size(self, name: str) -> int | None:
        i = self.info(name)
        return i.size if i.type == pafs.FileType.File else None

    def read_bytes(self, name: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._p(name)) as f:
                return f.read()
        except FileNotFoundError:
            raise DataError(f"{self._u(name)}: not found") from None
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(self._u(name), exc) from None

    def open_input(self, name: str) -> pa.NativeFile:
        """A random-access file (what pyarrow.parquet needs for ranged row-group reads)."""
        try:
            return self.fs.open_input_file(self._p(name))
        except FileNotFoundError:
            raise DataError(f"{self._u(name)}: not found") from None
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(self._u(name), exc) from None

    def write_bytes(self, name: str, data: bytes) -> None:
        """Whole-object write (an S3 PUT is atomic: readers see the old object or the new one)."""
        try:
            if not self.remote:
                self.fs.create_dir(os.path.dirname(self._p(name)) or ".", recursive=True)
            with self.fs.open_output_stream(self._p(name)) as f:
                f.write(data)
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(self._u(name), exc) from None

    def list(self) -> dict[str, int]:
        """Every file below this location: relative name -> size (empty when the location does not exist)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(self.url, exc) from None
        base = len(self.path) + 1
        return {i.path[base:]: i.size for i in infos if i.type == pafs.FileType.File}

    def delete_dir(self, name: str) -> None:
        """Remove a folder (an S3 prefix) and everything below it; nothing when it does not exist."""
        try:
            self.fs.delete_dir(self._p(name))
        except FileNotFoundError:
            pass
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(self._u(name), exc) from None

    def delete(self, names: list[str]) -> None:
        for name in names:
            try:
                self.fs.delete_file(self._p(name))
            except FileNotFoundError:
                pass
            except (OSError, pa.ArrowException) as exc:
                raise storage_error(self._u(name), exc) from None


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 client configured from the standard AWS environment (AWS_ENDPOINT_URL[_S3],
    AWS_REGION/AWS_DEFAULT_REGION; credentials through the AWS SDK's default chain)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    kwargs = {"connect_timeout": 10, "request_timeout": 60,
              "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=int(os.environ.get("GDM_S3_MAX_ATTEMPTS", "3")))}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def location(url: str | os.PathLike) -> Location:
    """The Location of a local path or an `s3://bucket/prefix` URL."""
    text = str(url)
    if is_s3(text):
        bucket_and_key = text[len("s3://"):].strip("/")
        if not bucket_and_key or bucket_and_key.startswith("/"):
            raise DataError(f"{text}: expected s3://BUCKET/PREFIX")
        try:
            fs = s3_filesystem()
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(text, exc) from None
        return Location(f"s3://{bucket_and_key}", fs, bucket_and_key)
    path = Path(text)
    return Location(str(path), pafs.LocalFileSystem(), path.absolute().as_posix())
