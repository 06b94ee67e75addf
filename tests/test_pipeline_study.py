"""The study's additions run through the pipeline DAG (the stage functions the flows and the CLI call):
classifier-free guidance rows beside classifier guidance in the summary and the trade-off plot."""

from __future__ import annotations

import pytest

from gdm.io import read_json
from gdm.pipeline import stage_graph
from tests.helpers import tiny_config

SCALES = (0.0, 1.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from flows.tasks import execute

    root = tmp_path_factory.mktemp("study")
    cfg = tiny_config(
        root, evaluator={"steps": 30, "batch_size": 64}, sample={"scales": list(SCALES)},
        eval={"kid_subset_size": 4, "kid_subsets": 2},
        pipeline={"models": {"cfg": {"unet.class_dropout": 0.5}}, "free_guidance": ["cfg"]},
    )
    graph = stage_graph(cfg, ablations=False)
    results = {s.name: execute(cfg, s, None, False) for s in graph}
    return cfg, graph, results


def test_free_guidance_stages_are_in_the_dag(study):
    _cfg, graph, _ = study
    names = [s.name for s in graph]
    for scale in SCALES:
        assert f"sample-free@cfg-ddim-{scale!r}" in names and f"evaluate-free@cfg-ddim-{scale!r}" in names
        assert f"sample@cfg-ddim-{scale!r}" in names  # classifier guidance of the same model
    free = next(s for s in graph if s.name == "sample-free@cfg-ddim-1.0")
    assert "--guidance free" in free.cmd and not any("classifier" in d for d in free.deps)
    report = next(s for s in graph if s.name == "report")
    assert "evaluate-free@cfg-ddim-1.0" in report.upstream


def test_summary_rows_carry_the_guidance_kind(study):
    cfg, _graph, _ = study
    rows = read_json(f"{cfg.pipeline.reports_dir}/summary.json")
    assert [(r["variant"], r["guidance"], r["scale"]) for r in rows] == [
        ("cfg", "classifier", 0.0), ("cfg", "classifier", 1.0), ("cfg", "free", 0.0), ("cfg", "free", 1.0)]
    # w = 0 and s = 0 are both unguided conditional sampling of the same model: the same samples, same scores
    assert rows[0]["fid"] == rows[2]["fid"] and rows[0]["accuracy"] == rows[2]["accuracy"]
    table = (cfg.pipeline.reports_dir and open(f"{cfg.pipeline.reports_dir}/summary.md").read())
    assert "| guidance |" in table.replace("guidance | scale", "guidance |")
    assert "cfg,ddim,free,1" in open(f"{cfg.pipeline.reports_dir}/tradeoff.csv").read()
    assert (read_json(f"{cfg.pipeline.runs_dir}/cfg/samples/ddim-free-1.0/ddim-5-free-scale1.json")["guidance"]
            == "free")
