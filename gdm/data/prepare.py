"""`gdm prepare`: a dataset source -> sharded Parquet + manifest + sample grid, streaming.

Output `<data.out_dir>/<data.name>/` (a local folder or an s3:// prefix):
- `train-00000.parquet`, `val-00000.parquet`, ...: columns `id` (stable sample id), `image`
  (PNG bytes), `label` (int32, -1 when unconditional), `split`, `source` (path or index); Parquet
  row groups of `data.row_group_size` rows (the unit the training reader reads and shuffles);
- `manifest.json`: source, counts per split and class, class names, resolution, channels, the
  shards with their rows, row groups, sizes and SHA-256, the content hash, skipped files, the
  resolved data config;
- `grid.png`: a few training images per class.

How: the source is listed first (ids, labels, fixed splits; nothing decoded), rows are ordered by
id and split (seeded, stratified); then images are decoded, resized and PNG-encoded by
`data.num_workers` processes (0 = in this process) in bounded, ordered chunks, and each shard is
written as soon as it is full. Memory is a few shards whatever the dataset size. The output
(shard bytes, manifest, content hash) is the same for any worker count and on every rerun.
Publishing is atomic (`gdm.data.publish`): a failure never leaves a half-written dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gdm.config import DataConfig
from gdm.data.encode import encode_entries
from gdm.data.preprocess import decode_png
from gdm.data.sources import NO_LABEL, Entry, SourceData, open_source
from gdm.errors import DataError
from gdm.progress import SILENT, Bar

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("label", pa.int32()),
        ("split", pa.string()),
        ("source", pa.string()),
    ]
)
MANIFEST = "manifest.json"
FORMAT = "gdm-prepared-v1"
# Keys that do not change the prepared bytes: left out of the manifest's config.
NOT_IN_MANIFEST = ("num_workers", "overwrite")


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Deterministic split: within each class, a seeded permutation; the first round(n*f) -> val."""
    is_val = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        is_val[idx[: round(len(idx) * val_fraction)]] = True
    return is_val


def plan(data: SourceData, cfg: DataConfig) -> dict[str, list[Entry]]:
    """The rows of each split, in shard order (by id), from the listing alone."""
    unconditional = cfg.labels == "none" or not data.class_names
    entries = sorted(data.entries, key=lambda e: e.sample_id)  # independent of file-system listing order
    if unconditional:
        entries = [Entry(e.key, NO_LABEL, e.sample_id, e.source, e.split) for e in entries]
    splits = [e.split for e in entries]
    if any(s is None for s in splits):
        is_val = stratified_split(np.array([e.label for e in entries]), cfg.val_fraction, cfg.seed)
        splits = ["val" if v else "train" for v in is_val]
    return {s: [e for e, es in zip(entries, splits) if es == s] for s in ("train", "val")}


class ShardWriter:
    """Cuts a split's rows into shards of `shard_size`, writes each when full, hashes what it wrote."""

    def __init__(self, cfg: DataConfig, staging: Any):
        self.cfg, self.staging = cfg, staging
        self.names: list[str] = []
        self.info: dict[str, dict[str, Any]] = {}
        self.hash = hashlib.sha256()
        self._rows: list[dict[str, Any]] = []
        self._split, self._k = "", 0

    def add(self, row: dict[str, Any]) -> None:
        if row["split"] != self._split:
            self.flush()
            self._split, self._k = row["split"], 0
        self._rows.append(row)
        if len(self._rows) == self.cfg.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        name = f"{self._split}-{self._k:05d}.parquet"
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(self._rows, schema=SCHEMA), buf, compression="zstd",
                       write_statistics=False, row_group_size=self.cfg.row_group_size)
        data = buf.getvalue().to_pybytes()
        self.hash.update(name.encode())
        self.hash.update(data)
        groups = [len(self._rows[i : i + self.cfg.row_group_size])
                  for i in range(0, len(self._rows), self.cfg.row_group_size)]
        self.info[name] = {"rows": len(self._rows), "row_groups": groups, "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}
        self.staging.write_shard(name, data)
        self.names.append(name)
        self._rows, self._k = [], self._k + 1


def prepare_dataset(cfg: DataConfig, progress: Bar = SILENT, out_dir: str | Path | None = None,
                    source: SourceData | None = None) -> Path | str:
    """Run the preparation; returns the dataset location (a Path, or an s3:// URL). Raises DataError on bad input.

    `source` is the already opened `data` source (its count sizes a progress bar); opened here when None.
    """
    from gdm.data.publish import publisher

    data = source if source is not None else open_source(
        cfg.source, cfg.path, cfg.labels, max_pixels=cfg.max_image_pixels, num_classes=cfg.num_classes)
    final = str(out_dir) if out_dir is not None else str(cfg.prepared_dir)
    pub = publisher(final, cfg)  # refuses a prefix holding another dataset before any work
    splits = plan(data, cfg)
    unconditional = cfg.labels == "none" or not data.class_names
    allow_upscale = cfg.source == "digits"  # digits are 8x8 and resizing them up is the point
    with pub.staging() as staging, contextlib.ExitStack() as stack:  # the worker pool stops on any exit
        writer = ShardWriter(cfg, staging)
        skipped: list[str] = []
        counts = {s: Counter() for s in splits}
        grid: list[tuple[int, np.ndarray]] = []
        ordered = [(s, e) for s in ("train", "val") for e in splits[s]]
        results = stack.enter_context(contextlib.closing(encode_entries(
            data, [e for _, e in ordered], cfg.resolution, cfg.channels, allow_upscale, cfg.num_workers)))
        for (split, entry), (png, err) in zip(ordered, results):
            progress.advance()
            if err:
                if cfg.on_bad_image == "error":
                    raise DataError(f"{err} (set data.on_bad_image: skip to skip such files)")
                skipped.append(err)
                continue
            writer.add({"id": entry.sample_id, "image": png, "label": entry.label, "split": split,
                        "source": entry.source})
            counts[split][entry.label] += 1
            if split == "train":
                _grid_pick(grid, entry.label, png, unconditional)
        writer.flush()
        if not writer.names:
            raise DataError(f"data source {cfg.source} {cfg.path or ''}: no usable images (skipped {len(skipped)})")
        manifest = _manifest(cfg, [] if unconditional else data.class_names, counts, writer, skipped,
                             staging.shard_prefix)
        staging.write_grid(_grid_png(grid, manifest["num_classes"]))
        staging.commit(manifest)
    return Path(final) if not final.startswith("s3://") else final


def _grid_pick(grid: list[tuple[int, np.ndarray]], label: int, png: bytes, unconditional: bool,
               per_class: int = 8) -> None:
    """The first 8 training images of each class (or the first 64 when unconditional)."""
    if unconditional:
        if len(grid) < 64:
            grid.append((0, decode_png(png)))
    elif sum(1 for c, _ in grid if c == label) < per_class:
        grid.append((label, decode_png(png)))


def _grid_png(grid: list[tuple[int, np.ndarray]], num_classes: int) -> bytes:
    import tempfile

    from gdm.viz import save_grid

    chosen = sorted(grid, key=lambda t: t[0]) if num_classes else grid  # stable: first-seen order per class
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "grid.png"
        save_grid(np.stack([img for _, img in chosen]), path, nrow=8)
        return path.read_bytes()


def _manifest(cfg: DataConfig, class_names: list[str], counts: dict[str, Counter], writer: ShardWriter,
              skipped: list[str], prefix: str) -> dict[str, Any]:
    class_counts = {s: {str(k): int(v) for k, v in sorted(c.items())} for s, c in counts.items()}
    config = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NOT_IN_MANIFEST}
    return {
        "format": FORMAT,
        "dataset": cfg.dataset_name,
        "source": cfg.source,
        "source_path": cfg.path,
        "resolution": cfg.resolution,
        "channels": cfg.channels,
        "conditional": bool(class_names),
        "num_classes": len(class_names),
        "class_names": class_names,
        "num_images": sum(sum(c.values()) for c in counts.values()),
        "split_sizes": {s: sum(c.values()) for s, c in counts.items()},
        "class_counts": class_counts,
        "shards": [prefix + n for n in writer.names],
        "shard_info": {prefix + n: i for n, i in writer.info.items()},
        "content_hash": writer.hash.hexdigest(),
        "skipped": {"count": len(skipped), "files": skipped},
        "config": config,
    }
