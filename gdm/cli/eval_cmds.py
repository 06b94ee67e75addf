"""`gdm train-evaluator` and `gdm evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gdm.cli import app
from gdm.cli.common import ParamsOpt, QuietOpt, SetOpt, config_from


@app.command("train-evaluator")
def train_evaluator(params: ParamsOpt = "params.yaml", set_: SetOpt = None,
                    out: Path | None = typer.Option(None, "--out", "-o"), quiet: QuietOpt = False) -> None:
    """Train the independent clean classifier whose features score samples (eval.features: evaluator)."""
    from gdm import stages

    r = stages.train_evaluator(config_from(params, set_), out=out, progress=not quiet)
    Console().print(f"evaluator: {r['model']}  validation accuracy {r['val_accuracy']:.4f}")


@app.command()
def evaluate(
    samples: Path | None = typer.Option(None, "--samples", help="ADM .npz sample file (arr_0 uint8 NHWC)."),
    reference: Path | None = typer.Option(
        None, "--reference", help="Prepared dataset directory or ADM reference batch .npz (default: the dataset)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="metrics.json to write."),
    evaluator: Path | None = typer.Option(None, "--evaluator", help="Evaluator checkpoint (eval.features: evaluator)."),
    split: str | None = typer.Option(None, "--split", help="Reference split: train | val (default eval.reference)."),
    require_accuracy: bool = typer.Option(False, "--accuracy", help="Fail unless class accuracy can be computed."),
    write_reference: Path | None = typer.Option(
        None, "--write-reference", help="Instead: write the dataset split as an ADM reference batch .npz."),
    params: ParamsOpt = "params.yaml",
    set_: SetOpt = None,
) -> None:
    """Score samples: FID, sFID, Inception Score, precision/recall, KID and class accuracy."""
    from gdm import stages
    from gdm.errors import GdmError
    from gdm.evaluation import write_reference_batch

    over = list(set_ or []) + ([f"eval.reference={split}"] if split else [])
    cfg = config_from(params, over)
    if write_reference:
        from gdm.io import check_file_target

        check_file_target(write_reference, "--write-reference")
        path = write_reference_batch(cfg, reference or stages.dataset_dir(cfg), write_reference, cfg.eval.reference,
                                     evaluator)
        Console().print(f"reference batch: {path}")
        return
    if samples is None:
        raise GdmError("evaluate: --samples FILE.npz is required (or --write-reference OUT.npz)")
    m = stages.evaluate(cfg, samples, reference=reference, out=out, evaluator=evaluator,
                        require_accuracy=require_accuracy)
    print_metrics(m)


def print_metrics(m: dict) -> None:
    t = Table(title=f"{m['samples']}  ({m['features']} features, N={m['num_samples']} vs {m['num_reference']})")
    for k in ("fid", "sfid", "is", "precision", "recall", "kid_mean", "accuracy"):
        t.add_column(k)
    t.add_row(*[("-" if m.get(k) is None else f"{m[k]:.4g}") for k in
                ("fid", "sfid", "is", "precision", "recall", "kid_mean", "accuracy")])
    c = Console()
    c.print(t)
    for w in m.get("warnings", []):
        c.print(f"[yellow]warning:[/] {w}")
