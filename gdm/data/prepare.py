"""`gdm prepare`: a dataset source -> sharded Parquet + manifest + sample grid.

Output `data/prepared/<dataset>/`:
- `train-00000.parquet`, `val-00000.parquet`, ...: columns `id` (stable sample id), `image`
  (PNG bytes), `label` (int32, -1 when unconditional), `split`, `source` (path or index);
- `manifest.json`: source, counts per split and class, class names, resolution, channels,
  content hash, skipped files, the resolved data config;
- `grid.png`: a few training images per class.
Everything is written into a temporary sibling directory and renamed into place at the end, so a
failure never leaves a half-written dataset. Same inputs -> byte-identical shards and manifest.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gdm.config import DataConfig
from gdm.data.preprocess import center_crop_resize, decode_png, encode_png, to_mode
from gdm.data.sources import NO_LABEL, Record, SourceData, open_source
from gdm.errors import DataError
from gdm.io import write_json
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


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Deterministic split: within each class, a seeded permutation; the first round(n*f) -> val."""
    is_val = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        is_val[idx[: round(len(idx) * val_fraction)]] = True
    return is_val


def _process(rec: Record, cfg: DataConfig, allow_upscale: bool) -> tuple[bytes | None, str | None]:
    if rec.error:
        return None, rec.error
    image = to_mode(rec.image, cfg.channels)
    if not allow_upscale and min(image.size) < cfg.resolution:
        return None, (
            f"{rec.source}: image is {image.size[0]}x{image.size[1]}, smaller than data.resolution "
            f"{cfg.resolution} (upscaling is not done: set data.resolution lower or remove the file)"
        )
    if image.size != (cfg.resolution, cfg.resolution):
        image = center_crop_resize(image, cfg.resolution)
    return encode_png(image), None


def prepare_dataset(cfg: DataConfig, progress: Bar = SILENT, out_dir: Path | None = None,
                    source: SourceData | None = None) -> Path:
    """Run the preparation; returns the dataset directory. Raises DataError on bad input.

    `source` is the already opened `data` source (its count sizes a progress bar); opened here when None.
    """
    data = source if source is not None else open_source(cfg.source, cfg.path, cfg.labels)
    unconditional = cfg.labels == "none" or not data.class_names
    allow_upscale = cfg.source == "digits"  # digits are 8x8 and resizing them up is the point
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for rec in data.records():
        png, err = _process(rec, cfg, allow_upscale)
        progress.advance()
        if err:
            if cfg.on_bad_image == "error":
                raise DataError(f"{err} (set data.on_bad_image: skip to skip such files)")
            skipped.append(err)
            continue
        label = NO_LABEL if unconditional else rec.label
        rows.append({"id": rec.sample_id, "image": png, "label": label, "split": rec.split, "source": rec.source})
    if not rows:
        raise DataError(f"data source {cfg.source} {cfg.path or ''}: no usable images (skipped {len(skipped)})")

    rows.sort(key=lambda r: r["id"])  # order independent of file-system listing order
    labels = np.array([r["label"] for r in rows])
    if any(r["split"] is None for r in rows):
        is_val = stratified_split(labels, cfg.val_fraction, cfg.seed)
        for r, v in zip(rows, is_val):
            r["split"] = "val" if v else "train"

    final = Path(out_dir) if out_dir is not None else cfg.prepared_dir
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o755)
    try:
        shards = _write_shards(rows, tmp, cfg.shard_size)
        manifest = _manifest(cfg, data.class_names if not unconditional else [], rows, shards, skipped, tmp)
        write_json(tmp / MANIFEST, manifest)
        _write_grid(rows, tmp / "grid.png", manifest["num_classes"])
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_shards(rows: list[dict[str, Any]], out: Path, shard_size: int) -> list[str]:
    names: list[str] = []
    for split in ("train", "val"):
        part = [r for r in rows if r["split"] == split]
        for k, start in enumerate(range(0, len(part), shard_size)):
            chunk = part[start : start + shard_size]
            table = pa.Table.from_pylist(chunk, schema=SCHEMA)
            name = f"{split}-{k:05d}.parquet"
            pq.write_table(table, out / name, compression="zstd", write_statistics=False)
            names.append(name)
    return names


def _manifest(cfg: DataConfig, class_names: list[str], rows: list[dict[str, Any]],
              shards: list[str], skipped: list[str], tmp: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    for name in shards:
        h.update(name.encode())
        h.update((tmp / name).read_bytes())
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "val"):
        c = Counter(r["label"] for r in rows if r["split"] == split)
        counts[split] = {str(k): int(v) for k, v in sorted(c.items())}
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
        "num_images": len(rows),
        "split_sizes": {s: sum(counts[s].values()) for s in counts},
        "class_counts": counts,
        "shards": shards,
        "content_hash": h.hexdigest(),
        "skipped": {"count": len(skipped), "files": skipped},
        "config": cfg.model_dump(mode="json"),
    }


def _write_grid(rows: list[dict[str, Any]], path: Path, num_classes: int, per_class: int = 8) -> None:
    from gdm.viz import save_grid

    train = [r for r in rows if r["split"] == "train"]
    if num_classes:
        chosen = []
        for c in range(num_classes):
            chosen += [r for r in train if r["label"] == c][:per_class]
        nrow = per_class
    else:
        chosen, nrow = train[:64], 8
    images = np.stack([decode_png(r["image"]) for r in chosen])
    save_grid(images, path, nrow=nrow)


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
