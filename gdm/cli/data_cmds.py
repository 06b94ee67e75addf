"""`gdm config show` and `gdm prepare`."""

from __future__ import annotations

import json

import typer
import yaml
from rich.console import Console
from rich.table import Table

from gdm.cli import app
from gdm.cli.common import ParamsOpt, QuietOpt, SetOpt, config_from

config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    params: ParamsOpt = "params.yaml",
    set_: SetOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
    flat: bool = typer.Option(False, "--flat", help="Print flattened key.path: value lines."),
) -> None:
    """Print the validated, fully resolved config (params.yaml + defaults + --set)."""
    cfg = config_from(params, set_)
    if flat:
        for k, v in cfg.flat().items():
            typer.echo(f"{k}: {json.dumps(v)}")
    elif as_json:
        typer.echo(json.dumps(cfg.to_dict(), indent=2))
    else:
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


@app.command()
def prepare(params: ParamsOpt = "params.yaml", set_: SetOpt = None, quiet: QuietOpt = False,
            overwrite: bool = typer.Option(False, "--overwrite",
                                           help="On s3://, replace a different dataset already at the prefix "
                                                "(= data.overwrite: true).")) -> None:
    """Turn the `data` source into Parquet shards + manifest.json + grid.png.

    data.out_dir (and data.path) may be s3://bucket/prefix: endpoint and credentials come from the
    standard AWS environment (AWS_ENDPOINT_URL for MinIO or another S3 API server). data.num_workers
    processes decode and encode the images; the output is the same for any number of them.
    """
    from gdm import stages

    cfg = config_from(params, set_)
    if overwrite:
        cfg = cfg.with_overrides({"data.overwrite": True}, origin="--overwrite")
    out = stages.prepare(cfg, progress=not quiet)
    print_dataset_summary(out)


def print_dataset_summary(dataset_dir) -> None:
    from gdm.data.dataset import read_manifest

    m = read_manifest(dataset_dir).raw
    table = Table(title=f"{m['dataset']}: {m['num_images']} images, {m['resolution']}x{m['resolution']}x"
                  f"{m['channels']}, {m['num_classes']} classes")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("per class")
    for split, n in m["split_sizes"].items():
        table.add_row(split, str(n), " ".join(f"{k}:{v}" for k, v in m["class_counts"][split].items()))
    c = Console()
    c.print(table)
    c.print(f"content hash {m['content_hash'][:16]}  skipped {m['skipped']['count']}  -> {dataset_dir}")
    c.print(f"grid: {dataset_dir}/grid.png")
