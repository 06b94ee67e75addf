"""Read prepared Parquet shards into torch.

`PreparedDataset` decodes the PNG bytes of one split into float tensors in [-1, 1] (CHW), with an
optional random horizontal flip. Small datasets are decoded once into memory; shards are read with
pyarrow so the same code streams larger ones one shard at a time (`iter_batches`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from gdm.data.prepare import FORMAT, MANIFEST
from gdm.data.preprocess import decode_png
from gdm.errors import DataError
from gdm.io import read_json


@dataclass(frozen=True)
class Manifest:
    path: Path
    raw: dict[str, Any]

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

    def shards(self, split: str) -> list[Path]:
        return [self.path / s for s in self.raw["shards"] if s.startswith(f"{split}-")]


def read_manifest(dataset_dir: str | Path) -> Manifest:
    d = Path(dataset_dir)
    f = d / MANIFEST
    if not f.is_file():
        raise DataError(f"{d}: not a prepared dataset (no {MANIFEST}); run `gdm prepare` first")
    raw = read_json(f)
    if raw.get("format") != FORMAT:
        raise DataError(f"{f}: unknown format {raw.get('format')!r}, expected {FORMAT!r}")
    return Manifest(d, raw)


def iter_shard_rows(paths: list[Path], columns: list[str]) -> Iterator[dict[str, Any]]:
    for p in paths:
        for batch in pq.ParquetFile(p).iter_batches(columns=columns, batch_size=1024):
            yield from batch.to_pylist()


def load_split_uint8(dataset_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of a split as uint8 NHWC plus int64 labels (-1 = none)."""
    m = read_manifest(dataset_dir)
    shards = m.shards(split)
    if not shards:
        raise DataError(f"{m.path}: split '{split}' is empty")
    images, labels = [], []
    for row in iter_shard_rows(shards, ["image", "label"]):
        images.append(decode_png(row["image"]))
        labels.append(row["label"])
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def to_float(images_uint8_nhwc: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8_nhwc)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC (ADM's rounding: ((x+1)*127.5).clamp(0,255).to(uint8))."""
    y = ((x.detach().float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


class PreparedDataset(torch.utils.data.Dataset):
    """One split of a prepared dataset as (image [-1,1] CHW float32, label int64)."""

    def __init__(self, dataset_dir: str | Path, split: str = "train", random_flip: bool = False):
        self.manifest = read_manifest(dataset_dir)
        images, labels = load_split_uint8(dataset_dir, split)
        self.images = to_float(images)
        self.labels = torch.from_numpy(labels)
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.random_flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


def infinite_batches(
    ds: PreparedDataset, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled epochs forever from an explicit generator (restorable for exact resume)."""
    n = len(ds)
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = perm[start : start + batch_size]
            x = ds.images[idx]
            if ds.random_flip:
                flip = torch.rand(len(idx), generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            yield x, ds.labels[idx]
