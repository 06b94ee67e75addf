"""On-disk cache of extracted features, keyed by what determines them.

Key = (dataset content hash, split, extractor name, extractor weights hash). Entries are `.npz`
files (no pickle) written atomically under `root/<extractor>/<split>/`; each stores its full key and
is checked on read, so a hash-prefix collision or a foreign file is a miss, never a wrong hit.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gdm.errors import GdmError
from gdm.io import atomic_path

_KEY_ARRAY = "__cache_key__"


class StatsKey(NamedTuple):
    dataset_hash: str
    split: str
    extractor: str
    weights_hash: str


def content_hash(*arrays: np.ndarray) -> str:
    """sha256 over dtype, shape and bytes of each array (a dataset's content hash)."""
    h = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _component(value: str, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise GdmError(f"StatsCache key field {field!r} must be a non-empty string, got {value!r}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", value)[:64]


class StatsCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: StatsKey | tuple) -> Path:
        key = StatsKey(*key)
        parts = {f: _component(v, f) for f, v in key._asdict().items()}
        name = f"{parts['dataset_hash'][:32]}-{parts['weights_hash'][:32]}.npz"
        return self.root / parts["extractor"] / parts["split"] / name

    def get(self, key: StatsKey | tuple) -> dict[str, np.ndarray] | None:
        """The stored feature arrays, or None on a miss (absent, unreadable or other key)."""
        key = StatsKey(*key)
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if _KEY_ARRAY not in z.files or tuple(z[_KEY_ARRAY].tolist()) != tuple(key):
                    return None
                return {name: z[name] for name in z.files if name != _KEY_ARRAY}
        except (OSError, ValueError, zipfile.BadZipFile):
            return None

    def put(self, key: StatsKey | tuple, features: dict[str, np.ndarray]) -> Path:
        key = StatsKey(*key)
        path = self.path(key)
        arrays = {name: np.asarray(value) for name, value in features.items()}
        if _KEY_ARRAY in arrays or any(a.dtype == object for a in arrays.values()):
            raise GdmError(
                f"StatsCache.put: features must be numeric arrays named other than "
                f"{_KEY_ARRAY!r}; got {sorted(arrays)}"
            )
        arrays[_KEY_ARRAY] = np.array(list(key), dtype=str)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return path
