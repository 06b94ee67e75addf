"""Dataset sources: a listing of `Entry`s (label, stable id, where it came from; nothing decoded),
and `load(entry)` -> `Record` (the decoded image, or the reason it could not be read).

Listing first and loading later lets `gdm prepare` decide splits and shard order from the listing
alone, then decode in parallel worker processes with bounded memory.

Sources (chosen by `data.source`): `digits` (scikit-learn's bundled handwritten digits),
`imagefolder` (class subfolders, or a flat folder labelled by the file-name prefix before the
first `_`), `cifar10` (the standard `cifar-10-python.tar.gz` archive) and `npz` (ADM's
sample/reference format). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import io
import pickle
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from gdm.config import MAX_IMAGE_PIXELS
from gdm.data.storage import is_s3, location
from gdm.errors import DataError, show_path

NO_LABEL = -1


@dataclass(frozen=True)
class Record:
    image: Image.Image | None  # None when the file could not be read (see `error`)
    label: int  # NO_LABEL when unconditional
    sample_id: str  # stable across runs: derived from the source, never from order of reading
    source: str  # relative path, or "<archive member>#index", or "index"
    split: str | None = None  # a split fixed by the source (CIFAR-10's official split)
    error: str | None = None


@dataclass(frozen=True, slots=True)  # one per image, held for the whole run: kept small
class Entry:
    key: int  # what the source's `load` needs to find the item (an index into its own listing)
    label: int
    sample_id: str
    source: str
    split: str | None = None


@dataclass(frozen=True)
class SourceData:
    entries: list[Entry]
    load: Callable[[Entry], Record]
    class_names: list[str]  # empty when unconditional

    @property
    def count(self) -> int:
        return len(self.entries)

    def records(self) -> Iterator[Record]:
        return (self.load(e) for e in self.entries)


# ------------------------------------------------------------------------------------- digits
def digits_source() -> SourceData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 8x8 intensities 0..16 -> uint8 0..255 (exact for 0 and 16)
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(int)

    entries = [Entry(i, int(y), f"digits-{i:05d}", str(i)) for i, y in enumerate(labels)]

    def load(e: Entry) -> Record:
        return Record(Image.fromarray(images[e.key], mode="L"), e.label, e.sample_id, e.source)

    return SourceData(entries, load, [str(c) for c in range(10)])


# -------------------------------------------------------------------------------- imagefolder
def imagefolder_source(path: str, labels: str = "auto", max_pixels: int = MAX_IMAGE_PIXELS,
                       num_classes: int | None = None) -> SourceData:
    if is_s3(path):
        root, files, opener = _s3_folder(path, max_pixels)
    else:
        root, opener = Path(path), functools.partial(_open_image, max_pixels=max_pixels)
        if not root.exists():
            raise DataError(f"data.path: image folder not found: {root}")
        if not root.is_dir():
            raise DataError(f"data.path: expected a directory of images, got a file: {root}")
        files = sorted(  # dangling links are kept: they are reported (or skipped) like unreadable images
            p for p in root.rglob("*")
            if (p.is_file() or p.is_symlink() and not p.exists())
            and not any(s.startswith(".") for s in p.relative_to(root).parts)
        )
        for p in files:
            _check_name(p, root)
    if not files:
        raise DataError(f"data.path: image folder is empty (no files found under {root})")
    subdirs = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    mode = labels
    if mode == "auto":
        mode = "subfolders" if subdirs else "filename"
    if mode == "subfolders":
        loose = [p for p in files if len(p.relative_to(root).parts) == 1]
        if loose:
            raise DataError(
                f"data.labels 'subfolders': {loose[0]} lies directly in {root}; every image must be in "
                "a class subfolder (or set data.labels: filename / none)"
            )
        class_of = {p: p.relative_to(root).parts[0] for p in files}
    elif mode == "filename":
        class_of = {p: p.name.split("_", 1)[0] for p in files}
        bare = [p.name for p in files if "_" not in p.name or not class_of[p]]
        if bare:
            raise DataError(
                f"data.labels 'filename' takes the class from the file-name prefix before the first '_', but "
                f"{len(bare)} file(s) in {root} have none (e.g. {', '.join(bare[:3])}); rename them "
                "'<class>_<name>', put them in class subfolders, or set data.labels: none"
            )
    else:
        class_of = {}
    class_names = sorted(set(class_of.values()))
    if num_classes is not None and class_of and len(class_names) != num_classes:
        raise DataError(f"{root}: found {len(class_names)} classes {class_names[:12]} but data.num_classes is "
                        f"{num_classes}")
    index = {c: i for i, c in enumerate(class_names)}

    entries = []
    for i, p in enumerate(files):
        rel = p.relative_to(root).as_posix()
        entries.append(Entry(i, index[class_of[p]] if class_of else NO_LABEL, f"file:{rel}", rel))
    del files, class_of  # Path objects cost ~0.5 KB each: a loader needs only the root and the relative path

    def load(e: Entry) -> Record:
        img, err = opener(root / e.source)
        return Record(img, e.label, e.sample_id, e.source, error=err)

    return SourceData(entries, load, class_names)


def _s3_folder(url: str, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[PurePosixPath, list[PurePosixPath], Callable]:
    """An image folder under an s3:// prefix: its files as paths below a pseudo root, and an opener."""
    loc = location(url)
    listing = loc.list()
    if not listing:
        raise DataError(f"data.path: image folder is empty or missing (no objects under {loc.url})")
    root = PurePosixPath("/" + loc.path)
    files = sorted(root / k for k in listing if not any(s.startswith(".") for s in k.split("/")))
    if not files:
        raise DataError(f"data.path: image folder is empty (only hidden objects under {loc.url})")
    return root, files, _S3Opener(loc.url, root, max_pixels)


class _S3Opener:
    """Reads one object of an s3:// image folder; each process (prepare worker) opens its own client."""

    def __init__(self, url: str, root: PurePosixPath, max_pixels: int = MAX_IMAGE_PIXELS):
        self.url, self.root, self._loc, self._pid = url, root, None, None
        self.max_pixels = max_pixels

    def __call__(self, p: PurePosixPath) -> tuple[Image.Image | None, str | None]:
        import os

        if self._pid != os.getpid():
            self._loc, self._pid = location(self.url), os.getpid()
        rel = p.relative_to(self.root).as_posix()
        try:
            data = self._loc.read_bytes(rel)
        except DataError as exc:
            return None, str(exc)
        return _open_image(io.BytesIO(data), name=f"{self.url}/{rel}", max_pixels=self.max_pixels)


def _check_name(path: Path, root: Path) -> None:
    """Names become sample ids, labels and Parquet strings: they must be valid UTF-8."""
    try:
        path.relative_to(root).as_posix().encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{show_path(path)}: the file or folder name is not valid UTF-8; rename it "
                        "(names become sample ids and class names)") from None


def _open_image(path: Path | io.BytesIO, name: str | None = None,
                max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Image.Image | None, str | None]:
    path_name = name or path
    if isinstance(path, Path) and path.is_symlink() and not path.exists():
        return None, f"{path}: dangling symbolic link (its target {show_path(path.readlink())} does not exist)"
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)  # PIL refuses at twice this
    bomb = (f"refused as a possible decompression bomb, over data.max_image_pixels {max_pixels:,} "
            "(raise it if the image is genuine)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    return None, f"{path_name}: image is {w}x{h} = {w * h:,} pixels: {bomb}"
                im.load()  # forces a full decode: truncated files fail here
                return im.copy(), None
    except Image.DecompressionBombError as exc:
        return None, f"{path_name}: {exc}: {bomb}"
    except UnidentifiedImageError:
        return None, f"{path_name}: not an image file (PIL cannot identify it)"
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"{path_name}: unreadable or truncated image ({exc})"


# ------------------------------------------------------------------------------------ cifar10
def _s3_bytes(url: str) -> io.BytesIO:
    """A whole s3:// object in memory (archives and .npz files are read whole anyway)."""
    loc = location(url.rsplit("/", 1)[0])
    try:
        return io.BytesIO(loc.read_bytes(url.rsplit("/", 1)[1]))
    except DataError as exc:
        raise DataError(f"data.path: {exc}") from None


def _open_tar(path: str) -> tarfile.TarFile:
    return tarfile.open(fileobj=_s3_bytes(path), mode="r:*") if is_s3(path) else tarfile.open(path, "r:*")


_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = "test_batch"
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow numpy arrays and plain containers, nothing that runs code."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _load_batch(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> dict:
    f = tar.extractfile(member)
    if f is None:
        raise DataError(f"{archive}: member {member.name} is not a file")
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{archive}: member {member.name} is not a CIFAR-10 batch: {exc}") from None
    obj = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise DataError(f"{archive}: member {member.name} lacks 'data'/'labels' (has {sorted(obj)})")
    data = np.asarray(obj["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{archive}: member {member.name}: 'data' must be uint8 [N, 3072], got "
            f"{data.dtype} {list(data.shape)}"
        )
    return obj


def cifar10_source(path: str, num_classes: int | None = None) -> SourceData:
    archive = path if is_s3(path) else Path(path)
    if not is_s3(path) and not archive.is_file():
        raise DataError(f"data.path: CIFAR-10 archive not found: {archive}")
    try:
        with _open_tar(path) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in _CIFAR_TRAIN + [_CIFAR_TEST] if n not in members]
            if missing:
                raise DataError(f"{archive}: not a CIFAR-10 python archive: missing members {missing}")
            batches = [(n, _load_batch(tar, members[n], archive)) for n in _CIFAR_TRAIN + [_CIFAR_TEST]]
            names = [f"class{i}" for i in range(num_classes or 10)]
            if "batches.meta" in members:
                meta = _load_batch_meta(tar, members["batches.meta"], archive)
                names = meta or names
            if num_classes is not None and len(names) != num_classes:
                raise DataError(f"{archive}: batches.meta names {len(names)} classes but data.num_classes is "
                                f"{num_classes}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{archive}: corrupt or unreadable archive: {exc}") from None
    for name, batch in batches:
        labs = np.asarray(batch["labels"])
        if labs.ndim != 1 or len(labs) != len(batch["data"]):
            raise DataError(f"{archive}: member {name} has {labs.size} labels for {len(batch['data'])} images")
        check_labels(labs, len(names), f"{archive}: member {name}")
    arrays, entries = [], []
    for name, batch in batches:
        split = "val" if name == _CIFAR_TEST else "train"
        arrays.append(batch["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        for i, y in enumerate(batch["labels"]):
            src = f"{name}#{i}"
            entries.append(Entry(len(arrays) - 1 << 32 | i, int(y), f"cifar10:{src}", src, split))

    def load(e: Entry) -> Record:
        img = arrays[e.key >> 32][e.key & 0xFFFFFFFF]
        return Record(Image.fromarray(np.ascontiguousarray(img), "RGB"), e.label, e.sample_id, e.source, e.split)

    return SourceData(entries, load, names)


def _load_batch_meta(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> list[str] | None:
    f = tar.extractfile(member)
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load() if f else None
    except Exception:
        return None
    if not isinstance(obj, dict):
        return None
    names = obj.get(b"label_names") or obj.get("label_names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else None


# ---------------------------------------------------------------------------------------- npz
def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Every label must be a class id in [0, num_classes)."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{where}: label {int(labels[i])} (at index {i}; {len(bad)} such) is outside the class range "
                        f"[0, {num_classes})")


def _dense_classes(labels: np.ndarray, where: str) -> int:
    """The class count of labels that do not declare it: max + 1, provided every class id occurs."""
    if labels.min() < 0:
        i = int(np.argmin(labels))
        raise DataError(f"{where}: label {int(labels[i])} at index {i} is negative; class ids start at 0 "
                        "(leave out arr_1 for an unconditional dataset)")
    top = int(labels.max())
    present = len(np.unique(labels))
    if present < top + 1:
        i = int(np.argmax(labels))
        raise DataError(
            f"{where}: labels go up to {top} (at index {i}) but only {present} of the {top + 1} class ids occur; "
            f"if the labels are right, say so with data.num_classes: {top + 1} (or the true class count)"
        )
    return top + 1


def npz_source(path: str, num_classes: int | None = None) -> SourceData:
    file = path if is_s3(path) else Path(path)
    if not is_s3(path) and not file.is_file():
        raise DataError(f"data.path: npz file not found: {file}")
    try:
        with np.load(_s3_bytes(path) if is_s3(path) else file, allow_pickle=False) as npz:
            if "arr_0" not in npz.files:
                raise DataError(f"{file}: expected ADM layout with 'arr_0' (uint8 NHWC), found {npz.files}")
            images = npz["arr_0"]
            labels = npz["arr_1"] if "arr_1" in npz.files else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{file}: not a readable .npz file: {exc}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{file}: arr_0 must be uint8 [N, H, W, C] with C in (1, 3), got {images.dtype} "
            f"{list(images.shape)}"
        )
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)):
        raise DataError(f"{file}: arr_1 must be [N] labels matching arr_0, got {list(labels.shape)}")
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{file}: arr_1 must hold integer labels, got {labels.dtype}")
    if labels is not None and len(labels):
        num_classes = num_classes or _dense_classes(labels, f"{file} arr_1")
        check_labels(labels, num_classes, f"{file} arr_1")
    else:
        num_classes = 0

    entries = [Entry(i, int(labels[i]) if labels is not None else NO_LABEL, f"npz:{i}", str(i))
               for i in range(len(images))]

    def load(e: Entry) -> Record:
        img = images[e.key]
        pil = Image.fromarray(img[..., 0], "L") if img.shape[-1] == 1 else Image.fromarray(img, "RGB")
        return Record(pil, e.label, e.sample_id, e.source)

    return SourceData(entries, load, [str(c) for c in range(num_classes)])


def open_source(source: str, path: str | None, labels: str = "auto", *, max_pixels: int = MAX_IMAGE_PIXELS,
                num_classes: int | None = None) -> SourceData:
    if source == "digits":
        return digits_source()
    if source == "imagefolder":
        return imagefolder_source(path, labels, max_pixels, num_classes)
    if source == "cifar10":
        return cifar10_source(path, num_classes)
    if source == "npz":
        return npz_source(path, num_classes)
    raise DataError(f"data.source: unknown source {source!r}")
