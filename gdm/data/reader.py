"""Streaming readers over prepared Parquet shards (a local folder or an s3:// prefix).

Public interface (used by every trainer, the evaluator and the reference features):

    reader = StepReader(dataset, "train", batch_size=B, seed=s, random_flip=f,
                        rank=r, world_size=W, num_workers=w, shuffle_window=N)
    x, y = reader.batch(k)                # rank r's slice of step k's GLOBAL batch
    for k, (x, y) in reader.batches(start, stop): ...   # the same, prefetched by w DataLoader workers

`x` is float32 NCHW in [-1, 1], `y` int64 (-1 when unconditional). What `batch(k)` returns is a
pure function of (dataset content, split, B, seed, shuffle window, random_flip, k, r, W): nothing
depends on the history of the reader, the number of workers or the process, so a resumed run gets
the same batches and W ranks read disjoint rows whose union (concatenated in rank order) is the
1-process global batch, bit for bit. The order itself is described in `gdm.data.order`; with
`reader.global_batch_size` rows per step the trainer's own draws (timesteps, noise) for the GLOBAL
batch can be sliced with `gdm.data.order.rank_slice(B, r, W)` the same way.

`iter_split(dataset, split, batch_size)` streams a split in row order as uint8 NHWC chunks (the
evaluator's training data, feature extraction) with memory bounded by one chunk.

Memory: a reader holds the Parquet row groups (compressed PNG bytes) of about one shuffle window
per process (`data.shuffle_window` rows), whatever the size of the dataset; a split no larger than
the window stays cached in memory after its first pass. PNGs are decoded per batch, in the
DataLoader workers when `num_workers` > 0.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gdm.data.dataset import Manifest, read_manifest, to_float
from gdm.data.order import StepOrder, flip_mask, rank_slice
from gdm.data.preprocess import decode_png
from gdm.errors import DataError

DEFAULT_WINDOW = 16384


@dataclass(frozen=True)
class Block:
    shard: int  # index into SplitIndex.shards
    row_group: int
    rows: int


class SplitIndex:
    """The blocks (Parquet row groups) of one split, in row order, and how to read them."""

    def __init__(self, manifest: Manifest, split: str):
        self.manifest = manifest
        self.split = split
        self.shards = manifest.shard_names(split)
        if not self.shards:
            raise DataError(f"{manifest.url}: split '{split}' is empty (no {split}-*.parquet shards in the manifest)")
        manifest.check_shards(split)
        self.blocks: list[Block] = []
        for i, name in enumerate(self.shards):
            for j, rows in enumerate(manifest.row_groups(name)):
                self.blocks.append(Block(i, j, rows))
        self.block_rows = [b.rows for b in self.blocks]
        self.starts = np.cumsum([0, *self.block_rows])[:-1]
        self.num_rows = int(sum(self.block_rows))

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global row numbers -> (block index, row inside the block)."""
        blk = np.searchsorted(self.starts, rows, side="right") - 1
        return blk, rows - self.starts[blk]


class BlockCache:
    """Row groups of one split, read on demand, kept while they fit in `capacity_rows` (LRU).

    When the whole split fits, blocks are kept decoded (uint8): a small split is read and decoded
    once per process. Otherwise the compressed PNG bytes are kept and rows decoded when used.
    """

    def __init__(self, index: SplitIndex, capacity_rows: int, decoded: bool | None = None):
        self.index, self.capacity = index, capacity_rows
        self.decoded = index.num_rows <= capacity_rows if decoded is None else decoded
        self._blocks: OrderedDict[int, tuple[pa.Array | np.ndarray, np.ndarray]] = OrderedDict()
        self._rows = 0
        self._files: OrderedDict[int, pq.ParquetFile] = OrderedDict()

    def reset_files(self) -> None:
        self._files.clear()

    def _file(self, shard: int) -> pq.ParquetFile:
        f = self._files.get(shard)
        if f is None:
            name = self.index.shards[shard]
            f = self.index.manifest.open_shard(name)
            self._files[shard] = f
            while len(self._files) > 8:
                self._files.popitem(last=False)
        self._files.move_to_end(shard)
        return f

    def get(self, b: int) -> tuple[pa.Array | np.ndarray, np.ndarray]:
        if b not in self._blocks:
            self.prefetch([b])
        self._blocks.move_to_end(b)
        return self._blocks[b]

    def prefetch(self, blocks: list[int]) -> None:
        """Read the missing ones of `blocks`, one `read_row_groups` call per shard (pyarrow coalesces the
        byte ranges and decompresses in parallel: much cheaper than one call per row group, on S3 above all)."""
        by_shard: dict[int, list[int]] = {}
        for b in dict.fromkeys(blocks):
            if b in self._blocks:
                self._blocks.move_to_end(b)
            else:
                by_shard.setdefault(self.index.blocks[b].shard, []).append(b)
        for shard, bs in sorted(by_shard.items()):
            bs.sort(key=lambda b: self.index.blocks[b].row_group)
            groups = [self.index.blocks[b].row_group for b in bs]
            name = self.index.shards[shard]
            try:
                table = self._file(shard).read_row_groups(groups, columns=["image", "label"], use_threads=True)
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"{self.index.manifest.shard_url(name)}: cannot read row groups {groups[:4]} "
                                f"(shard truncated or corrupt?): {exc}") from None
            expected = sum(self.index.blocks[b].rows for b in bs)
            if table.num_rows != expected:
                raise DataError(f"{self.index.manifest.shard_url(name)}: row groups {groups[:4]} hold "
                                f"{table.num_rows} rows, the manifest says {expected}")
            images, labels = table.column("image"), table.column("label").to_numpy().astype(np.int64)
            start = 0
            for b in bs:
                n = self.index.blocks[b].rows
                pngs = images.slice(start, n).combine_chunks()
                if self.decoded:
                    pngs = np.stack([self._decode(pngs[i].as_py(), b) for i in range(n)])
                self._blocks[b] = (pngs, labels[start : start + n])
                self._rows += n
                start += n
        while self._rows > self.capacity and len(self._blocks) > 1:
            old, _ = self._blocks.popitem(last=False)
            self._rows -= self.index.blocks[old].rows

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 NHWC images and int64 labels of the given global rows, in that order."""
        blk, off = self.index.locate(np.asarray(rows, dtype=np.int64))
        self.prefetch(blk.tolist())
        if self.decoded:
            parts = {b: self.get(b) for b in dict.fromkeys(blk.tolist())}
            if len(parts) == 1:
                (imgs, lab), = parts.values()
                return imgs[off], lab[off]
            return (np.stack([parts[b][0][o] for b, o in zip(blk.tolist(), off.tolist())]),
                    np.array([parts[b][1][o] for b, o in zip(blk.tolist(), off.tolist())], dtype=np.int64))
        images, labels = [None] * len(blk), np.empty(len(blk), dtype=np.int64)
        for b in dict.fromkeys(blk.tolist()):  # each block once, in first-use order
            pngs, lab = self.get(b)
            for i in np.flatnonzero(blk == b):
                images[i] = self._decode(pngs[int(off[i])].as_py(), b)
                labels[i] = lab[off[i]]
        return np.stack(images), labels

    def _decode(self, data: bytes, b: int) -> np.ndarray:
        name = self.index.shards[self.index.blocks[b].shard]
        try:
            image = decode_png(data)
        except Exception as exc:
            raise DataError(f"{self.index.manifest.shard_url(name)}: an image of row group "
                            f"{self.index.blocks[b].row_group} is not a valid PNG: {exc}") from None
        m = self.index.manifest
        if image.shape != (m.resolution, m.resolution, m.channels):
            raise DataError(f"{m.shard_url(name)}: an image of row group {self.index.blocks[b].row_group} is "
                            f"{image.shape} (H, W, C), the manifest says {(m.resolution, m.resolution, m.channels)}")
        return image


class StepReader(torch.utils.data.Dataset):
    """Item k = this rank's slice of step k's global batch, as (x float32 NCHW [-1, 1], y int64)."""

    def __init__(self, dataset: str, split: str = "train", *, batch_size: int, seed: int,
                 random_flip: bool = False, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 shuffle_window: int = DEFAULT_WINDOW, manifest: Manifest | None = None):
        if num_workers < 0:
            raise DataError(f"num_workers must be >= 0, got {num_workers}")
        self.manifest = manifest or read_manifest(dataset)
        self.index = SplitIndex(self.manifest, split)
        self.order = StepOrder(self.index.block_rows, batch_size, seed, shuffle_window)
        self.global_batch_size = self.order.batch_size
        self.seed, self.random_flip = seed, random_flip
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.slice = rank_slice(self.global_batch_size, rank, world_size)
        # the blocks of the (at most two) windows a batch draws from; a one-window split stays decoded in memory
        capacity = 2 * (shuffle_window + max(self.index.block_rows)) + self.global_batch_size
        self.cache = BlockCache(self.index, capacity, decoded=self.index.num_rows <= shuffle_window)

    def __len__(self) -> int:
        """Rows in the split (not steps: the step sequence is unbounded)."""
        return self.index.num_rows

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.order.rows(step, self.rank, self.world_size).numpy()
        self.cache.prefetch(self.order.window_blocks(step))  # a window's row groups in a few bulk reads
        images, labels = self.cache.read(rows)
        if self.random_flip:  # mirror the chosen rows left-right (W is axis 2 of NHWC), exact on uint8
            flip = flip_mask(self.seed, step, self.global_batch_size)[self.slice].numpy()
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        return to_float(images), torch.from_numpy(labels)

    __getitem__ = batch

    def batches(self, start: int, stop: int) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor]]]:
        """(step, batch) for steps start..stop-1, prefetched by `num_workers` DataLoader workers."""
        steps = range(start, stop)
        if self.num_workers == 0:
            for k in steps:
                yield k, self.batch(k)
            return
        loader = torch.utils.data.DataLoader(self, batch_size=None, sampler=steps, num_workers=self.num_workers,
                                             prefetch_factor=2, persistent_workers=False, worker_init_fn=_reopen)
        yield from zip(steps, loader)


class RowReader:
    """Random access to the rows of one split: `take(rows)` -> (x float32 NCHW [-1, 1], y int64).

    `chunks(n)` streams the split in row order. Row groups stay cached up to `cache_rows` rows (a
    small split is read once); random rows of a large split cost one row-group read each.
    """

    def __init__(self, dataset: str | Manifest, split: str, cache_rows: int = DEFAULT_WINDOW):
        manifest = dataset if isinstance(dataset, Manifest) else read_manifest(dataset)
        self.index = SplitIndex(manifest, split)
        self.cache = BlockCache(self.index, cache_rows + 2 * max(self.index.block_rows))

    def __len__(self) -> int:
        return self.index.num_rows

    def read_uint8(self, rows: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return self.cache.read(np.asarray(rows, dtype=np.int64))

    def take(self, rows: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.read_uint8(rows)
        return to_float(images), torch.from_numpy(labels)

    def chunks_uint8(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self), size):
            yield self.read_uint8(np.arange(start, min(start + size, len(self))))

    def chunks(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.chunks_uint8(size):
            yield to_float(images), torch.from_numpy(labels)


class TensorRows:
    """The `RowReader` interface over tensors already in memory (tests, generated data)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if len(images) != len(labels):
            raise DataError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[rows], self.labels[rows]

    def chunks(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), size):
            yield self.images[start : start + size], self.labels[start : start + size]


def _reopen(worker_id: int) -> None:
    """In a DataLoader worker: fresh storage clients (an S3 client is not shared across a fork)."""
    reader = torch.utils.data.get_worker_info().dataset
    reader.manifest.reopen()
    reader.cache.reset_files()


def iter_split(dataset: str | Manifest, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A split in row order as (uint8 NHWC, int64 labels) chunks of <= batch_size rows (bounded memory)."""
    yield from RowReader(dataset, split, cache_rows=batch_size).chunks_uint8(batch_size)


def load_split(dataset: str | Manifest, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory as uint8 NHWC + int64 labels (small splits: digits, validation sets)."""
    chunks = list(iter_split(dataset, split, 4096))
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
