"""Progress reporting for long work, kept out of the algorithms.

Library loops take an optional progress object with `advance(n=1, **fields)`; `progress_bar`
builds one backed by rich (bar, count, rate, elapsed, ETA and live fields such as the loss),
or a silent one when disabled. An orchestrator can also listen (`reporting(listener)`): the
listener sees every advance as `(description, completed, total, fields)`, bar or no bar, which is
how the Prefect flows show a stage's progress in their UI without `gdm` importing prefect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Listener = Callable[[str, int, int, dict[str, Any]], None]
_LISTENER: ContextVar[Listener | None] = ContextVar("gdm_progress_listener", default=None)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Bar:
    """Handle passed into library loops; a no-op when it has neither a display nor a listener."""

    def __init__(self, progress: Progress | None = None, task: Any = None, *, listener: Listener | None = None,
                 description: str = "", total: int = 0, completed: int = 0):
        self._progress, self._task = progress, task
        self._listener, self._description, self._total, self._done = listener, description, total, completed

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self._listener is not None:
            self._done += n
            self._listener(self._description, self._done, self._total, fields)
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
def reporting(listener: Listener) -> Iterator[None]:
    """Send every progress bar opened in this context (this thread) to `listener` as well."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, enabled: bool = True, completed: int = 0
) -> Iterator[Bar]:
    """A rich progress bar (items/s, ETA, extra fields); silent when disabled (a listener set with
    `reporting` still hears it)."""
    listener = _LISTENER.get()
    if not enabled:
        yield Bar(listener=listener, description=description, total=total, completed=completed) if listener else SILENT
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
        yield Bar(prog, task, listener=listener, description=description, total=total, completed=completed)
