"""`gdm report` and `gdm stages` (the pipeline DAG as declared in gdm/pipeline.py)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from gdm.cli import app
from gdm.cli.common import ParamsOpt, QuietOpt, SetOpt, config_from


@app.command()
def report(params: ParamsOpt = "params.yaml", set_: SetOpt = None,
           ablations: bool = typer.Option(False, "--ablations", help="The architecture-ablation table instead."),
           upsampling: bool = typer.Option(False, "--upsampling",
                                           help="The upsampling study's table (Table 5 miniature) instead."),
           quiet: QuietOpt = False) -> None:
    """Compare runs: reports/summary.json|md + trade-off plot, reports/ablation.json|md|png, or
    reports/upsampling.json|md."""
    from gdm import stages
    from gdm.io import read_json

    cfg = config_from(params, set_)
    if upsampling:
        from gdm.stages_upsampling import upsampling_report

        written = upsampling_report(cfg)
        if not quiet:
            print_upsampling(read_json(written["upsampling"])["table5"])
        Console().print("written: " + "  ".join(str(p) for p in written.values()))
        return
    written = stages.report(cfg, ablations=ablations)
    rows = read_json(written["ablation" if ablations else "summary"])
    if not quiet:
        print_rows(rows, ablations)
    Console().print("written: " + "  ".join(str(p) for p in written.values()))


SUMMARY_COLUMNS = ("variant", "sampler", "steps", "guidance", "scale", "fid", "sfid", "is", "precision", "recall",
                   "accuracy")
ABLATION_COLUMNS = ("variant", "num_parameters", "train_images_per_s", "sample_seconds_per_image", "fid", "delta_fid",
                    "precision", "recall", "accuracy")


def print_rows(rows: list[dict], ablations: bool = False) -> None:
    cols = ABLATION_COLUMNS if ablations else SUMMARY_COLUMNS
    t = Table(title="architecture ablations" if ablations else "guidance sweep (per variant, sampler, guidance, scale)")
    for c in cols:
        t.add_column(c, justify="left" if c in ("variant", "sampler", "guidance") else "right")
    for r in rows:
        t.add_row(*[("-" if r.get(c) is None else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]))
                    for c in cols])
    console = Console()
    Console(width=max(console.width, 150)).print(t)  # keep the metric columns readable when piped


def print_upsampling(rows: list[dict]) -> None:
    cols = ("row", "model", "sampler", "base_resolution", "scale", "fid", "sfid", "is", "precision", "recall",
            "accuracy")
    t = Table(title="upsampling study (Table 5 miniature; guided rows at their best scale)")
    for c in cols:
        t.add_column(c, justify="left" if c in ("row", "model", "sampler") else "right")
    for r in rows:
        t.add_row(*[("-" if r.get(c) is None else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]))
                    for c in cols])
    Console(width=max(Console().width, 150)).print(t)


@app.command()
def stages(params: ParamsOpt = "params.yaml", set_: SetOpt = None,
           ablations: bool = typer.Option(True, "--ablations/--no-ablations")) -> None:
    """List the pipeline's stages (the DAG that dvc.yaml and the Prefect flows both run)."""
    from gdm.pipeline import stage_graph

    cfg = config_from(params, set_)
    t = Table(title="pipeline stages")
    for c in ("stage", "command", "outputs"):
        t.add_column(c)
    for s in stage_graph(cfg, ablations=ablations):
        t.add_row(s.name, s.cmd, "\n".join(s.outs + s.metrics))
    Console().print(t)
