"""`gdm` command line: thin wrappers over `gdm.stages` and the library.

Bad input (config, files, checkpoints) raises `GdmError`; `main` prints its message without a
traceback and exits with status 2.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from gdm.errors import GdmError

app = typer.Typer(
    name="gdm",
    help="Guided diffusion (ADM) experiment platform: prepare -> train -> sample -> evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Importing the command modules registers their commands on `app`.
from gdm.cli import data_cmds, eval_cmds, nn_cmds, pipeline_cmds, registry_cmds, train_cmds  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    err = Console(stderr=True)
    try:
        app(args=argv, prog_name="gdm", standalone_mode=True)
    except GdmError as exc:
        err.print(f"[bold red]error{_rank()}:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; finished work is kept (rerun to resume)")
        sys.exit(130)


def _rank() -> str:
    """' (rank r/N)' inside a multi-process torchrun job (gdm.launch picks these lines out), else ''."""
    rank, size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    return f" (rank {rank}/{size})" if rank is not None and size not in (None, "1") else ""
