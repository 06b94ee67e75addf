"""One function per pipeline stage: typed config + paths in, paths/metrics out.

The CLI, `dvc.yaml` (through the CLI) and the Prefect flows all call these functions, so there is
one code path whatever runs the pipeline.
"""

from __future__ import annotations

from pathlib import Path

from gdm.config import Config
from gdm.progress import progress_bar


def prepare(cfg: Config, progress: bool = True) -> Path:
    """Stage `prepare`: dataset source -> data/prepared/<dataset>/ (shards, manifest, grid)."""
    from gdm.data.prepare import prepare_dataset
    from gdm.data.sources import open_source

    total = open_source(cfg.data.source, cfg.data.path, cfg.data.labels).count
    with progress_bar(f"prepare {cfg.data.dataset_name}", total, enabled=progress) as bar:
        return prepare_dataset(cfg.data, progress=bar)
