"""Per-step training metrics kept as CSV (for `dvc plots`) and JSON (last values, for `dvc metrics`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from gdm.io import write_bytes, write_json


class MetricsLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}  # run-level figures written into the JSON beside the last row
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]

    def truncate(self, step: int) -> None:
        """Drop rows logged after `step` (they belong to work a resumed run redoes)."""
        self.rows = [r for r in self.rows if r["step"] <= step]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))

    def last(self) -> dict[str, Any]:
        return dict(self.rows[-1]) if self.rows else {}

    def write(self) -> None:
        write_json(self.path.with_suffix(".json"), {**self.last(), **self.extra})
        if not self.rows:
            return
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        write_bytes(self.path, buf.getvalue().encode())


def _num(v: str) -> Any:
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
