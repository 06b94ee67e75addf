"""`gdm promote`: move a registry alias (e.g. champion) to a model version, explicitly."""

from __future__ import annotations

import typer
from rich.console import Console

from gdm.cli import app
from gdm.cli.common import ParamsOpt, SetOpt, config_from


@app.command()
def promote(
    variant: str = typer.Option("cond", "--variant", "-v", help="Model variant: promotes gdm-unet-<variant>."),
    classifier: bool = typer.Option(False, "--classifier", help="Promote the guidance classifier instead."),
    version: str | None = typer.Option(None, "--version", help="Model version to promote (default: the one "
                                                               "--from-alias names, else the newest)."),
    from_alias: str | None = typer.Option("candidate", "--from-alias", help="Promote the version this alias names."),
    alias: str = typer.Option("champion", "--alias", help="Alias to move."),
    params: ParamsOpt = "params.yaml",
    set_: SetOpt = None,
) -> None:
    """Point an MLflow registry alias (default champion) at a model version (default: today's candidate).

    Training never moves `champion`; this command (or the pipeline flow's `promote` parameter) does."""
    from gdm.tracking import promote as do_promote

    cfg = config_from(params, set_)
    tc = cfg.tracking
    name = tc.classifier_model_name if classifier else f"{tc.unet_model_name}-{variant}"
    r = do_promote(tc, name, alias, version=version, from_alias=None if version else from_alias)
    was = f" (was version {r['previous']})" if r["previous"] else ""
    Console().print(f"{r['name']}@{r['alias']} -> version {r['version']}{was}")
