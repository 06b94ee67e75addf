"""Options shared by every command, and the config loading they imply."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gdm.config import DEFAULT_PARAMS, Config, load_config

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="params.yaml to read.", show_default=True)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a key, e.g. --set unet.model_channels=64 (repeatable; values are YAML).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def config_from(params: Path = Path(DEFAULT_PARAMS), overrides: list[str] | None = None) -> Config:
    return load_config(params, overrides or [])
