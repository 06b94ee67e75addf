"""`gdm` command line: thin wrappers over `gdm.stages` and the library.

Bad input (config, files, checkpoints) raises `GdmError`; `main` prints its message without a
traceback and exits with status 2. File-system errors that name their file (a full disk, a
permission, a file where a directory belongs) are mapped the same way (`gdm.errors.as_gdm_error`).
Anything else is a bug: its traceback is shown, with a line asking to report it (exit 1).
"""

from __future__ import annotations

import os
import sys
import traceback

import typer
from rich.console import Console
from rich.text import Text

from gdm.errors import GdmError, as_gdm_error

app = typer.Typer(
    name="gdm",
    help="Guided diffusion (ADM) experiment platform: prepare -> train -> sample -> evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Importing the command modules registers their commands on `app`.
from gdm.cli import data_cmds, eval_cmds, nn_cmds, pipeline_cmds, registry_cmds, train_cmds  # noqa: F401

REPORT = ("this is a bug in gdm, not a problem with your input: please report it with the command line "
          "and the traceback above")


def main(argv: list[str] | None = None) -> None:
    err = Console(stderr=True)
    try:
        app(args=argv, prog_name="gdm", standalone_mode=True)
    except KeyboardInterrupt:
        err.print("interrupted; finished work is kept (rerun to resume)")
        sys.exit(130)
    except Exception as exc:
        mapped = as_gdm_error(exc) if isinstance(exc, (GdmError, OSError)) else None
        if mapped is None:
            traceback.print_exc()
            err.print(Text.assemble((f"internal error{_rank()}: ", "bold red"), REPORT), highlight=False,
                      soft_wrap=True)
            sys.exit(1)
        err.print(Text.assemble((f"error{_rank()}: ", "bold red"), str(mapped)), highlight=False, soft_wrap=True)
        sys.exit(2)


def _rank() -> str:
    """' (rank r/N)' inside a multi-process torchrun job (gdm.launch picks these lines out), else ''."""
    rank, size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    return f" (rank {rank}/{size})" if rank is not None and size not in (None, "1") else ""
