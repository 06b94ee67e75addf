"""The study's additions run through the pipeline DAG (the stage functions the flows and the CLI call):
classifier-free guidance rows beside classifier guidance in the summary and the trade-off plot, and the
upsampling study (low-res base + low-res classifier + upsampler -> two-stage samples -> Table 5 rows)."""

from __future__ import annotations

from pathlib import Path

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
        pipeline={"models": {"cfg": {"unet.class_dropout": 0.5}}, "free_guidance": ["cfg"],
                  "upsampling_models": ["cfg"]},
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
    reports = Path(cfg.pipeline.reports_dir)
    assert "| guidance | scale |" in (reports / "summary.md").read_text()
    assert "cfg,ddim,free,1" in (reports / "tradeoff.csv").read_text()
    assert (read_json(f"{cfg.pipeline.runs_dir}/cfg/samples/ddim-free-1.0/ddim-5-free-scale1.json")["guidance"]
            == "free")


def test_upsampling_stages_are_in_the_dag_in_order(study):
    _cfg, graph, results = study
    names = [s.name for s in graph]
    for name in ("train-upsampler", "train-classifier-low", "train-low@cfg", "sample-up@cfg-ddim-1.0",
                 "evaluate-up@cfg-ddim-1.0", "upsampling-report"):
        assert name in names
    up = next(s for s in graph if s.name == "sample-up@cfg-ddim-1.0")
    assert set(up.upstream) == {"train-low@cfg", "train-classifier-low", "train-upsampler"}
    assert names.index("upsampling-report") > max(names.index(n) for n in names if n.startswith("evaluate"))
    assert results["train-low@cfg"]["model"].endswith("cfg/unet-low/model.pt")


def test_two_stage_outputs_and_checkpoints(study):
    from gdm.io import load_checkpoint
    from gdm.metrics.npz import read_samples

    cfg, _graph, results = study
    runs = cfg.pipeline.runs_dir
    low = load_checkpoint(f"{runs}/cfg/unet-low/model.pt")
    assert low["model_kwargs"]["image_size"] == 4 and low["config"]["train"]["resolution"] == 4
    up = load_checkpoint(f"{runs}/upsampler/model.pt")
    assert up["kind"] == "superres" and (up["model_kwargs"]["small_size"], up["model_kwargs"]["large_size"]) == (4, 8)
    assert load_checkpoint(f"{runs}/classifier-low/classifier.pt")["model_kwargs"]["image_size"] == 4
    final, low_npz = results["sample-up@cfg-ddim-1.0"]["npz"], results["sample-up@cfg-ddim-1.0"]["low_npz"]
    x, y = read_samples(final)
    xl, yl = read_samples(low_npz)
    assert x.shape == (6, 8, 8, 1) and xl.shape == (6, 4, 4, 1)
    assert (y == yl).all() and (y == [0, 1, 2, 3, 4, 5]).all()  # the requested labels follow both stages
    meta = read_json(final.replace(".npz", ".json"))
    assert meta["stage"] == "upsample" and meta["base"]["scale"] == 1.0 and meta["base"]["classifier"].endswith(
        "classifier-low/classifier.pt")


def test_upsampling_report_rows(study):
    cfg, _graph, _ = study
    doc = read_json(f"{cfg.pipeline.reports_dir}/upsampling.json")
    rows = {r["row"]: r for r in doc["table5"]}
    assert list(rows) == ["ADM", "ADM-G", "ADM-U", "ADM-G + ADM-U"]
    assert rows["ADM"]["base_resolution"] == 8 and rows["ADM-U"]["base_resolution"] == 4
    assert rows["ADM-G"]["scale"] == 1.0 and rows["ADM-U"]["scale"] == 0.0
    direct = read_json(f"{cfg.pipeline.runs_dir}/eval/cfg-ddim-0.0.json")
    assert rows["ADM"]["fid"] == direct["fid"]
    assert len(doc["sweep"]) == 2 * len(SCALES)
    assert "ADM-G + ADM-U" in (Path(cfg.pipeline.reports_dir) / "upsampling.md").read_text()
    flat = read_json(f"{cfg.pipeline.reports_dir}/upsampling_metrics.json")  # DVC's metric: numbers only
    assert set(flat) == {"cfg/ddim/adm", "cfg/ddim/adm_g", "cfg/ddim/adm_u", "cfg/ddim/adm_g_adm_u"}
    assert flat["cfg/ddim/adm"]["fid"] == direct["fid"] and flat["cfg/ddim/adm_u"]["base_resolution"] == 4
    assert all(isinstance(v, (int, float)) for row in flat.values() for v in row.values())
