"""Publishing a prepared dataset atomically, on a local disk or on S3.

Local folder: everything is written into a temporary sibling folder, which is renamed into place at
the end (the previous dataset is moved aside first and removed only after the swap): a failure
leaves the previous dataset as it was.

S3 prefix (no rename on S3): the shards go under a fresh generation folder `<prefix>/data-<id>/`,
then `grid.png`, then `manifest.json` LAST. The manifest is the commit marker: a reader opens the
manifest and reads only the shards it lists, so it never sees a manifest whose shards are missing,
and a failed run leaves the previous manifest and its shards untouched (its own partial generation
is deleted). After the commit, objects of older generations are deleted (a reader that opened the
previous manifest before the commit then gets a clear "shard missing" error naming the shard).

A prefix that holds a *different* dataset (another source, path, resolution, split, ... per the
manifest's config) or objects that are not a gdm dataset is refused unless `data.overwrite` is set.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gdm.config import DataConfig
from gdm.data.prepare import MANIFEST, NOT_IN_MANIFEST
from gdm.data.storage import Location, location
from gdm.errors import DataError
from gdm.io import check_dir_target, make_dir
from gdm.locks import locked_temp_dir, sweep_stale

GRID = "grid.png"
GEN_PREFIX = "data-"
# Data keys that make two prepared datasets "the same dataset" (rerunning is then not an overwrite).
IDENTITY = ("source", "path", "name", "resolution", "channels", "val_fraction", "seed", "labels", "on_bad_image",
            "shard_size", "row_group_size")


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in IDENTITY}


class LocalStaging:
    shard_prefix = ""

    def __init__(self, tmp: Path, final: Path):
        self.tmp, self.final = tmp, final

    def write_shard(self, name: str, data: bytes) -> None:
        (self.tmp / name).write_bytes(data)

    def write_grid(self, data: bytes) -> None:
        (self.tmp / GRID).write_bytes(data)

    def commit(self, manifest: dict[str, Any]) -> None:
        from gdm.io import write_bytes

        write_bytes(self.tmp / MANIFEST, manifest_bytes(manifest))
        _swap_into_place(self.tmp, self.final)


class LocalPublisher:
    def __init__(self, final: Path):
        self.final = final
        check_dir_target(final, "data.out_dir: dataset directory")  # a file in the way: refused before any work

    @contextlib.contextmanager
    def staging(self) -> Iterator[LocalStaging]:
        make_dir(self.final.parent, "data.out_dir")
        sweep_stale(self.final.parent, f"{self.final.name}.")  # temporaries of killed runs (a live one is locked)
        _recover_swap(self.final)
        with locked_temp_dir(self.final) as tmp:  # removed on failure; renamed into place on success
            yield LocalStaging(tmp, self.final)


def _recover_swap(final: Path) -> None:
    """A run killed between the two renames of `_swap_into_place` left the previous dataset at
    `.<name>.old`: put it back (or drop it when the new one made it into place)."""
    old = final.with_name(f".{final.name}.old")
    if old.is_dir():
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(final)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp` with two renames; the old copy is removed only after the swap."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class S3Staging:
    def __init__(self, loc: Location, gen: str):
        self.loc, self.gen = loc, gen
        self.shard_prefix = f"{gen}/"

    def write_shard(self, name: str, data: bytes) -> None:
        self.loc.write_bytes(self.shard_prefix + name, data)

    def write_grid(self, data: bytes) -> None:
        self._grid = data

    def commit(self, manifest: dict[str, Any]) -> None:
        present = self.loc.list()
        missing = [s for s in manifest["shards"] if present.get(s) != manifest["shard_info"][s]["bytes"]]
        if missing:
            raise DataError(f"{self.loc.url}: shards {missing[:3]} did not arrive intact; manifest not written")
        self.loc.write_bytes(GRID, self._grid)
        self.loc.write_bytes(MANIFEST, manifest_bytes(manifest))  # the commit
        for gen in sorted({k.split("/", 1)[0] for k in present if k.startswith(GEN_PREFIX)} - {self.gen}):
            self.loc.delete_dir(gen)  # older generations (their manifest is gone)


class S3Publisher:
    def __init__(self, loc: Location, cfg: DataConfig):
        self.loc = loc
        loc.check_bucket()  # a missing bucket, unreachable endpoint or denied access fails here, before any work
        present = loc.list()
        if cfg.overwrite or not present:
            return
        ours = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NOT_IN_MANIFEST}
        if MANIFEST in present:
            try:
                old = json.loads(loc.read_bytes(MANIFEST))
                theirs = old.get("config", {})
            except (json.JSONDecodeError, AttributeError):
                theirs = {"unreadable manifest": True}
            if _identity(theirs) != _identity(ours):
                diff = [f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in IDENTITY
                        if theirs.get(k) != ours.get(k)]
                raise DataError(
                    f"{loc.url}: holds another prepared dataset ({'; '.join(diff[:4]) or 'unreadable manifest'}); "
                    "refusing to overwrite it. Choose another data.out_dir/data.name, or set data.overwrite: true "
                    "(gdm prepare --overwrite) to replace it."
                )
            return
        foreign = sorted(k for k in present if not k.startswith(GEN_PREFIX) and k != GRID)
        if foreign:
            raise DataError(
                f"{loc.url}: the prefix is not empty and holds no gdm dataset (e.g. {foreign[0]}); refusing to "
                "write into it. Choose another data.out_dir/data.name, or set data.overwrite: true."
            )

    @contextlib.contextmanager
    def staging(self) -> Iterator[S3Staging]:
        stage = S3Staging(self.loc, f"{GEN_PREFIX}{uuid.uuid4().hex[:12]}")
        try:
            yield stage
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the commit marker was never written
                self.loc.delete_dir(stage.gen)
            raise


def publisher(final: str, cfg: DataConfig) -> LocalPublisher | S3Publisher:
    loc = location(final)
    return S3Publisher(loc, cfg) if loc.remote else LocalPublisher(Path(final))
