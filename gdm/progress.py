"""Progress reporting for long work, kept out of the algorithms.

Library loops take an optional progress object with `advance(n=1, **fields)`; `progress_bar`
builds one backed by rich (bar, count, rate, elapsed, ETA and live fields such as the loss),
or a silent one when disabled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Bar:
    """Handle passed into library loops; a no-op when `progress` is None."""

    def __init__(self, progress: Progress | None = None, task: Any = None):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self._progress is None:
            return
        speed = self._progress.tasks[self._task].speed
        self._progress.update(
            self._task,
            advance=n,
            rate=f"{speed:.1f}/s" if speed else "",
            info=" ".join(f"{k}={_fmt(v)}" for k, v in fields.items()),
        )


SILENT = Bar()


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, enabled: bool = True, completed: int = 0
) -> Iterator[Bar]:
    """A rich progress bar (items/s, ETA, extra fields); silent when disabled."""
    if not enabled:
        yield SILENT
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, refresh_per_second=4) as prog:
        task = prog.add_task(description, total=total, completed=completed, info="", rate="")
        yield Bar(prog, task)
