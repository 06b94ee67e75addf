"""Prepared datasets: the manifest (the commit marker of a dataset) and tensor conversions.

A prepared dataset is a folder or an `s3://` prefix holding `manifest.json` and the Parquet shards
it lists (`gdm.data.prepare`). `read_manifest` opens one; the streaming readers over its shards
live in `gdm.data.reader`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gdm.data.prepare import FORMAT, MANIFEST
from gdm.data.storage import Location, location
from gdm.errors import DataError
from gdm.io import reading


@dataclass
class Manifest:
    loc: Location
    raw: dict[str, Any]
    _row_groups: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return self.loc.url

    @property
    def path(self) -> Path | str:
        """The dataset folder (a Path), or its s3:// URL (a str)."""
        return self.loc.url if self.loc.remote else Path(self.loc.url)

    @property
    def num_classes(self) -> int:
        return int(self.raw["num_classes"])

    @property
    def resolution(self) -> int:
        return int(self.raw["resolution"])

    @property
    def channels(self) -> int:
        return int(self.raw["channels"])

    @property
    def content_hash(self) -> str:
        return self.raw["content_hash"]

    def info(self) -> dict[str, Any]:
        """What checkpoints record about the data they were trained on."""
        return {"dataset": str(self.path), "content_hash": self.content_hash, "resolution": self.resolution,
                "channels": self.channels, "num_classes": self.num_classes}

    def shard_names(self, split: str) -> list[str]:
        return [s for s in self.raw["shards"] if Path(s).name.startswith(f"{split}-")]

    def reopen(self) -> None:
        """A new storage client for this dataset (after a fork)."""
        self.loc = location(self.loc.url)

    def shard_url(self, name: str) -> str:
        return self.loc.child(*name.split("/")).url

    def open_shard(self, name: str) -> pq.ParquetFile:
        """A shard's Parquet file, checked against the manifest (present, not truncated)."""
        expected = (self.raw.get("shard_info") or {}).get(name, {}).get("bytes")
        if expected is not None:
            size = self.loc.size(name)
            if size is None:
                raise DataError(f"{self.shard_url(name)}: shard listed in {self.url}/{MANIFEST} is missing")
            if size != expected:
                raise DataError(f"{self.shard_url(name)}: shard is {size} bytes, the manifest says {expected} "
                                "(truncated, or rewritten after the manifest was read)")
        f = self.loc.open_input(name)
        try:
            return pq.ParquetFile(f)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{self.shard_url(name)}: not a readable Parquet shard (truncated or corrupt?): "
                            f"{exc}") from None

    def check_shards(self, split: str) -> None:
        """The split's shards are all present with the sizes the manifest records (one listing)."""
        info = self.raw.get("shard_info")
        if not info:
            return
        present = self.loc.list()
        wrong = []
        for n in self.shard_names(split):
            size, expected = present.get(n), info[n]["bytes"]
            if size != expected:
                wrong.append(f"{n} (missing)" if size is None else f"{n} ({size} bytes, expected {expected})")
        if wrong:
            raise DataError(f"{self.url}: the manifest's shard list disagrees with the objects present: "
                            f"{', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''} (re-run `gdm prepare`)")

    def row_groups(self, name: str) -> list[int]:
        """Rows per Parquet row group of a shard (from the manifest, else the shard's footer)."""
        info = (self.raw.get("shard_info") or {}).get(name)
        if info is not None:
            return [int(r) for r in info["row_groups"]]
        if name not in self._row_groups:
            md = self.open_shard(name).metadata
            self._row_groups[name] = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        return self._row_groups[name]


def read_manifest(dataset_dir: str | Path) -> Manifest:
    loc = location(dataset_dir)
    if not loc.exists(MANIFEST):
        loc.check_bucket()  # on S3, say so when the bucket itself is missing
        raise DataError(f"{loc.url}: not a prepared dataset (no {MANIFEST}); run `gdm prepare` first")
    where = f"{loc.url}/{MANIFEST}"
    with reading(where):  # not JSON, not UTF-8: named, not a traceback
        raw = json.loads(loc.read_bytes(MANIFEST))
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{where}: unknown format {got!r}, expected {FORMAT!r}; rerun `gdm prepare`")
    missing = [k for k in ("num_classes", "resolution", "channels", "content_hash", "shards") if k not in raw]
    if missing:
        raise DataError(f"{where}: manifest lacks {missing}; rerun `gdm prepare`")
    if not isinstance(raw["shards"], list) or not all(isinstance(s, str) for s in raw["shards"]):
        raise DataError(f"{where}: 'shards' must be a list of file names; rerun `gdm prepare`")
    if not loc.remote:  # (on S3 a missing shard is named when it is opened: no request per shard here)
        absent = [s for s in raw["shards"] if not loc.exists(s)]
        if absent:
            raise DataError(f"{loc.url}: shards listed in {MANIFEST} are missing: {absent[:5]}; rerun `gdm prepare`")
    return Manifest(loc, raw)


def load_split_uint8(dataset_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of a split as uint8 NHWC plus int64 labels (-1 = none): small splits only."""
    from gdm.data.reader import load_split

    return load_split(read_manifest(dataset_dir), split)


def to_float(images_uint8_nhwc: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]: x / 127.5 - 1 in float32 (an NCHW view of NHWC memory).

    Computed in numpy: the same bits as torch's `x.float() / 127.5 - 1` (checked for all 256 values),
    without waking torch's thread pool for every small batch (slow on a busy machine, in DataLoader
    workers as well as in the training process).
    """
    x = np.asarray(images_uint8_nhwc).astype(np.float32)
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC (ADM's rounding: ((x+1)*127.5).clamp(0,255).to(uint8))."""
    y = ((x.detach().float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()
