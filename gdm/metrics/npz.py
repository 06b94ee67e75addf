"""ADM sample / reference batch files (`.npz`).

Layout (as the ADM evaluator reads them): `arr_0` uint8 images N x H x W x C (C = 1 or 3),
optional `arr_1` integer labels (N,). Reference batches may also carry precomputed Inception
statistics `mu`, `sigma` (pool_3, 2048-d) and `mu_s`, `sigma_s` (spatial, 2023-d).
Files are read with allow_pickle=False and written atomically.

Large files stream: `SampleWriter` appends image rows chunk by chunk (the bytes equal np.savez of
the whole arrays) and `iter_images` reads them back a batch at a time, so memory is bounded by a
batch whatever N (50k samples at 256x256 are ~10 GB of uint8).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gdm.errors import DataError
from gdm.io import atomic_path, reading

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def _open(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: npz file not found")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if not hasattr(z, "files"):  # a bare .npy array, not an archive of named arrays
        raise DataError(f"{path}: a single .npy array, not an .npz archive with 'arr_0'")
    return z


def _check_images(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{where}: expected uint8 images N x H x W x C with C in {{1, 3}} (NHWC), "
            f"got shape {images.shape} dtype {images.dtype}"
        )
    return images


def _check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{where}: expected integer labels of shape ({n},), "
            f"got shape {labels.shape} dtype {labels.dtype}"
        )
    return labels.astype(np.int64)


def read_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 NHWC, labels int64 or None) from an ADM `.npz` (arr_0, optional arr_1)."""
    path = Path(path)
    with _open(path) as z, reading(path):  # object arrays, truncated members: named errors
        if "arr_0" not in z.files:
            raise DataError(f"{path}: no 'arr_0' (images) array; arrays present: {z.files}")
        images = _check_images(z["arr_0"], f"{path} arr_0")
        labels = None
        if "arr_1" in z.files:
            labels = _check_labels(z["arr_1"], images.shape[0], f"{path} arr_1")
    return images, labels


def write_samples(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Atomically write `arr_0` = images (uint8 NHWC), `arr_1` = labels, plus `extra` arrays."""
    images = _check_images(np.asarray(images), f"write_samples({path}) images")
    arrays: dict[str, np.ndarray] = {"arr_0": images}
    if labels is not None:
        arrays["arr_1"] = _check_labels(np.asarray(labels), images.shape[0], f"{path} labels")
    for key, value in (extra or {}).items():
        if key in arrays:
            raise DataError(f"write_samples({path}): extra key {key!r} clashes with arr_0/arr_1")
        arrays[key] = np.asarray(value)
        if arrays[key].dtype == object:
            raise DataError(f"write_samples({path}): extra[{key!r}] is an object array")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def image_header(path: str | os.PathLike) -> tuple[int, tuple[int, int, int]]:
    """(N, (H, W, C)) of `arr_0` from the .npy header alone."""
    with _arr0(Path(path)) as (shape, _f):
        return shape[0], tuple(shape[1:])


def iter_images(path: str | os.PathLike, batch_size: int) -> Iterator[np.ndarray]:
    """`arr_0` as consecutive uint8 NHWC batches of `batch_size` rows (the last may be shorter)."""
    path = Path(path)
    with _arr0(path) as (shape, f):
        row = int(np.prod(shape[1:]))
        for start in range(0, shape[0], batch_size):
            k = min(batch_size, shape[0] - start)
            buf = f.read(k * row)
            if len(buf) != k * row:
                raise DataError(f"{path}: arr_0 is truncated (header says {shape[0]} images)")
            yield np.frombuffer(bytearray(buf), dtype=np.uint8).reshape(k, *shape[1:])  # writable


def read_labels(path: str | os.PathLike) -> np.ndarray | None:
    """`arr_1` labels (int64) or None, without reading the images."""
    path = Path(path)
    n, _ = image_header(path)
    with _open(path) as z:
        return _check_labels(z["arr_1"], n, f"{path} arr_1") if "arr_1" in z.files else None


@contextlib.contextmanager
def _arr0(path: Path) -> Iterator[tuple[tuple[int, ...], object]]:
    if not path.is_file():
        raise DataError(f"{path}: npz file not found")
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    with z:
        if "arr_0.npy" not in z.namelist():
            raise DataError(f"{path}: no 'arr_0' (images) array; arrays present: "
                            f"{[n.removesuffix('.npy') for n in z.namelist()]}")
        with z.open("arr_0.npy") as f:
            try:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                shape, fortran, dtype = read[version](f)
            except (KeyError, ValueError) as exc:
                raise DataError(f"{path}: arr_0 is not a readable .npy array ({exc})") from None
            if fortran or dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
                raise DataError(f"{path} arr_0: expected uint8 images N x H x W x C with C in {{1, 3}} (NHWC, "
                                f"C order), got shape {shape} dtype {dtype}{' (Fortran order)' if fortran else ''}")
            yield shape, f


class SampleWriter:
    """An ADM .npz written `append` by `append`: arr_0 (n x H x W x C uint8) then arr_1 labels.

    Only one chunk of images is in memory at a time. The file is atomic (nothing appears unless
    all n rows were written) and byte-identical to `write_samples` of the concatenated arrays.
    """

    def __init__(self, zf: zipfile.ZipFile, n: int, image_shape: tuple[int, int, int], path: Path):
        self.path, self.n, self.image_shape, self.count = path, n, tuple(image_shape), 0
        self.labels: list[np.ndarray] = []
        self._zf = zf
        self._f = zf.open("arr_0.npy", "w", force_zip64=True)  # as np.savez writes each member
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (n, *self.image_shape)}
        np.lib.format.write_array_header_1_0(self._f, header)

    def append(self, images: np.ndarray, labels: np.ndarray) -> None:
        images = _check_images(np.asarray(images), f"{self.path} rows {self.count}+")
        if tuple(images.shape[1:]) != self.image_shape or self.count + len(images) > self.n:
            raise DataError(f"{self.path}: chunk of shape {images.shape} does not fit {self.n} x {self.image_shape} "
                            f"after {self.count} rows")
        self._f.write(np.ascontiguousarray(images).tobytes("C"))
        self.labels.append(_check_labels(np.asarray(labels), len(images), f"{self.path} labels"))
        self.count += len(images)

    def _finish(self) -> None:
        self._f.close()
        if self.count != self.n:
            raise DataError(f"{self.path}: {self.count} images written, {self.n} announced")
        with self._zf.open("arr_1.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64),
                                      allow_pickle=False)


@contextlib.contextmanager
def sample_writer(path: str | os.PathLike, n: int, image_shape: tuple[int, int, int]) -> Iterator[SampleWriter]:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        w = SampleWriter(zf, n, image_shape, path)
        yield w
        w._finish()


def read_reference_stats(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """Precomputed {mu, sigma[, mu_s, sigma_s]} (float64) from a reference batch, or None."""
    path = Path(path)
    with _open(path) as z, reading(path):
        if "mu" not in z.files and "sigma" not in z.files:
            return None
        stats = {}
        for mean_key, cov_key in (("mu", "sigma"), ("mu_s", "sigma_s")):
            if mean_key not in z.files and cov_key not in z.files:
                continue
            if mean_key not in z.files or cov_key not in z.files:
                raise DataError(f"{path}: has only one of {mean_key!r}/{cov_key!r}; need both")
            mu, sigma = z[mean_key].astype(np.float64), z[cov_key].astype(np.float64)
            d = mu.shape[0] if mu.ndim == 1 else -1
            if mu.ndim != 1 or sigma.shape != (d, d):
                raise DataError(
                    f"{path}: {mean_key} must be (d,) and {cov_key} (d, d); "
                    f"got {mu.shape} and {sigma.shape}"
                )
            if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                raise DataError(f"{path}: {mean_key}/{cov_key} hold NaN or infinite values")
            stats[mean_key], stats[cov_key] = mu, sigma
    return stats


def write_reference_batch(
    path: str | os.PathLike,
    images: np.ndarray,
    stats: dict[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> None:
    """Atomically write a reference batch: arr_0 images, optional arr_1 labels and statistics."""
    stats = dict(stats or {})
    unknown = sorted(set(stats) - set(STAT_KEYS))
    if unknown:
        raise DataError(f"write_reference_batch({path}): unknown stats keys {unknown}")
    write_samples(path, images, labels, {k: np.asarray(v, np.float64) for k, v in stats.items()})
