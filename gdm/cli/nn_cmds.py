"""`gdm presets` and `gdm import-adm`: the released ADM networks (ADM.md sec. 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gdm.cli import app
from gdm.cli.common import ParamsOpt, SetOpt, config_from


@app.command()
def presets(
    params: ParamsOpt = "params.yaml",
    set_: SetOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print only {preset: parameter count} as JSON."),
) -> None:
    """List the released-network presets: kind, parameter count (built on the meta device), description."""
    from gdm.nn import PRESETS, build_preset, count_parameters

    config_from(params, set_)  # unused, but a broken params.yaml is reported like everywhere else
    counts = {name: count_parameters(build_preset(name, device="meta")) for name in PRESETS}
    if as_json:
        typer.echo(json.dumps(counts))
        return
    t = Table(title="ADM presets (gdm import-adm --preset NAME)")
    for col, justify in (("preset", "left"), ("kind", "left"), ("parameters", "right"),
                         ("description", "left")):
        t.add_column(col, justify=justify)
    for name, p in PRESETS.items():
        n = counts[name]
        mark = "" if p.params in (None, n) else f" (released: {p.params:,})"
        t.add_row(name, p.kind, f"{n:,}{mark}", p.description)
    Console().print(t)


@app.command("import-adm")
def import_adm(
    preset: Annotated[str, typer.Option("--preset", help="Preset name (see `gdm presets`).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Released guided-diffusion .pt file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="gdm-checkpoint-v1 file to write.")],
    params: ParamsOpt = "params.yaml",
    set_: SetOpt = None,
) -> None:
    """Convert a released guided-diffusion checkpoint (loaded with weights_only=True, checked key by key)."""
    from gdm.io import check_file_target, sha256_file
    from gdm.nn.adm_import import import_adm_checkpoint
    from gdm.nn.presets import get_preset

    config_from(params, set_)  # unused, validated for uniformity
    get_preset(preset)  # unknown name -> ConfigError listing the known presets
    check_file_target(out, "--out")  # before the (large) checkpoint is read
    info = import_adm_checkpoint(preset, checkpoint, out)
    for key, value in (("preset", info["preset"]), ("kind", info["kind"]),
                       ("parameters", f"{info['config']['import']['parameters']:,}"), ("source", checkpoint),
                       ("source sha256", info["source_sha256"]), ("out", info["out"]),
                       ("out sha256", sha256_file(info["out"]))):
        typer.echo(f"{key}: {value}")
