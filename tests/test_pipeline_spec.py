"""dvc.yaml and gdm/pipeline.py declare the same DAG.

DVC expands dvc.yaml (foreach/matrix over params.yaml) with its own Python API; `stage_graph`
expands the same params in Python. For every stage the names, commands, deps, outs, metrics,
plots, params and the upstream closure must agree. The comparison is itself tested: mutated copies
of dvc.yaml must be reported, and non-default params.yaml files must still agree.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from gdm.config import load_config
from gdm.pipeline import stage_graph

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("cmd", "deps", "outs", "metrics", "plots", "params")


def _norm_cmd(cmd: str) -> str:
    return re.sub(r"\s+", " ", cmd).strip()


def dvc_stages(root: Path) -> dict[str, dict]:
    """Expanded stages of root/dvc.yaml as DVC sees them: name -> field sets (+ `ancestors`)."""
    import networkx as nx
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out: dict[str, dict] = {}
    with Repo(str(root)) as repo:
        stages = repo.index.stages
        graph = repo.index.graph  # edges: stage -> the stages producing its deps
        for s in stages:
            params, deps = set(), set()
            for d in s.deps:
                if isinstance(d, ParamsDependency):
                    assert Path(d.def_path).name == "params.yaml", (s.name, d.def_path)
                    params |= set(d.params)
                else:
                    deps.add(d.def_path)
            out[s.name] = {
                "cmd": _norm_cmd(s.cmd),
                "deps": deps,
                "outs": {o.def_path for o in s.outs if not o.metric and not o.plot},
                "metrics": {o.def_path for o in s.outs if o.metric},
                "plots": {o.def_path for o in s.outs if o.plot},
                "params": params,
                "uncached": {o.def_path for o in s.outs if not o.use_cache},
                "ancestors": {a.name for a in nx.descendants(graph, s)},
            }
    return out


def graph_stages(root: Path) -> dict[str, dict]:
    """The same view of `stage_graph(load_config(root/params.yaml))`."""
    stages = stage_graph(load_config(root / "params.yaml"))
    by_name = {s.name: s for s in stages}
    assert len(by_name) == len(stages), "duplicate stage names in stage_graph"

    def ancestors(name: str) -> set[str]:
        seen, todo = set(), list(by_name[name].upstream)
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(by_name[n].upstream)
        return seen

    return {
        s.name: {
            "cmd": _norm_cmd(s.cmd), "deps": set(s.deps), "outs": set(s.outs),
            "metrics": set(s.metrics), "plots": set(s.plots), "params": set(s.params),
            "ancestors": ancestors(s.name),
        }
        for s in stages
    }


def compare(root: Path) -> list[str]:
    """Every disagreement between root/dvc.yaml and stage_graph, one line each (empty: agree)."""
    dvc, py = dvc_stages(root), graph_stages(root)
    problems = [f"stage {n!r} only in dvc.yaml" for n in sorted(set(dvc) - set(py))]
    problems += [f"stage {n!r} only in gdm/pipeline.py" for n in sorted(set(py) - set(dvc))]
    for name in sorted(set(dvc) & set(py)):
        for f in FIELDS + ("ancestors",):
            if dvc[name][f] != py[name][f]:
                problems.append(f"{name}.{f}: dvc.yaml {dvc[name][f]!r} != pipeline.py {py[name][f]!r}")
        # Metrics and plots are small files kept in git, never in the DVC cache.
        cached = (dvc[name]["metrics"] | dvc[name]["plots"]) - dvc[name]["uncached"]
        if cached:
            problems.append(f"{name}: metrics/plots {sorted(cached)} need cache: false")
    return problems


def _copy_project(tmp_path: Path, params: dict | None = None, dvc_text: str | None = None) -> Path:
    """dvc.yaml + params.yaml (optionally replaced) in a bare DVC project with no git."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
    (tmp_path / "dvc.yaml").write_text(dvc_text if dvc_text is not None else (ROOT / "dvc.yaml").read_text())
    if params is None:
        shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    else:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def _repo_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


# ------------------------------------------------------------------------------------- agreement
def test_repo_dvc_yaml_matches_stage_graph():
    problems = compare(ROOT)
    assert not problems, "\n".join(problems)
    # The expansion is not vacuous: every kind of stage is there.
    names = set(dvc_stages(ROOT))
    cfg = load_config(ROOT / "params.yaml")
    p = cfg.pipeline
    n_grid = (len(p.models) + len(p.free_guidance)) * len(p.samplers) * len(cfg.sample.scales)
    assert p.free_guidance, "the repo's params.yaml sweeps classifier-free guidance"
    n_up = len(p.upsampling_models)
    n_upsampling = 2 + n_up + 2 * n_up * len(p.samplers) * len(cfg.sample.scales) + 1
    assert p.upsampling_models, "the repo's params.yaml runs the upsampling study"
    assert len(names) == 3 + len(p.models) + 2 * n_grid + 1 + n_upsampling + 3 * len(p.ablations) + 1
    up = p.upsampling_models[0]
    assert {"train-upsampler", "train-classifier-low", f"train-low@{up}", f"sample-up@{up}-ddim-1.0",
            f"evaluate-up@{up}-ddim-1.0", "upsampling-report"} <= names
    assert {"prepare", "report", "ablation-report", "train@cond", "sample@cond-ddim-1.0",
            f"sample-free@{p.free_guidance[0]}-ddim-1.0", f"evaluate-free@{p.free_guidance[0]}-ddim-1.0"} <= names


def _small(p: dict) -> dict:
    p["pipeline"]["models"] = {"cond": {}}
    p["pipeline"]["free_guidance"] = []  # no classifier-free sweep: its matrix expands to nothing
    p["pipeline"]["upsampling_models"] = []  # nor low-res models: the upsampler and its classifier remain
    p["sample"]["scales"] = [0.0, 1.0]
    p["pipeline"]["samplers"] = ["ddim"]
    p["pipeline"]["ablations"] = {"base": {}, "biggan": {"unet.resblock_updown": True}}
    return p


def _renamed_paths(p: dict) -> dict:
    p["data"]["name"] = "digits8"
    p["data"]["out_dir"] = "prep"
    p["pipeline"]["runs_dir"] = "out/runs"
    p["pipeline"]["reports_dir"] = "out/reports"
    p["pipeline"]["samplers"] = ["ddim", "ddpm"]
    p["sample"]["sampler"] = "ddpm"
    p["sample"]["scales"] = [0.25, 10.0]
    p["pipeline"]["models"] = {"uncond": {"unet.num_classes": None}, "wide": {"unet.model_channels": 64},
                               "drop": {"unet.class_dropout": 0.2}}
    p["pipeline"]["free_guidance"] = ["drop"]
    p["pipeline"]["upsampling_models"] = ["uncond", "drop"]
    p["upsampler"]["low_resolution"] = 4
    p["pipeline"]["ablations"] = {"a1": {}, "a2": {"unet.num_heads": 2}}
    p["pipeline"]["baseline"] = "a2"
    return p


@pytest.mark.parametrize("edit", [_small, _renamed_paths], ids=["small", "renamed-paths"])
def test_expansion_agrees_beyond_defaults(tmp_path, edit):
    params = edit(_repo_params())
    root = _copy_project(tmp_path, params=params)
    problems = compare(root)
    assert not problems, "\n".join(problems)
    names = set(dvc_stages(root))
    if edit is _small:
        assert names == {
            "prepare", "train-classifier", "train-evaluator", "train@cond",
            "sample@cond-ddim-0.0", "sample@cond-ddim-1.0",
            "evaluate@cond-ddim-0.0", "evaluate@cond-ddim-1.0", "report",
            "train-ablation@base", "train-ablation@biggan", "sample-ablation@base",
            "sample-ablation@biggan", "evaluate-ablation@base", "evaluate-ablation@biggan",
            "ablation-report", "train-upsampler", "train-classifier-low", "upsampling-report",
        }
    else:
        assert "evaluate@wide-ddpm-10.0" in names and "sample-ablation@a2" in names
        assert "evaluate-free@drop-ddpm-10.0" in names and "sample-free@wide-ddpm-10.0" not in names
        assert dvc_stages(root)["sample-free@drop-ddim-0.25"]["outs"] == {"out/runs/drop/samples/ddim-free-0.25"}
        assert dvc_stages(root)["sample-up@uncond-ddpm-10.0"]["outs"] == {"out/runs/uncond/samples-up/ddpm-10.0"}
        assert "train-low@drop" in names and "train-low@wide" not in names
        assert dvc_stages(root)["sample-ablation@a2"]["outs"] == {"out/runs/a2/samples/ddpm-0.0"}


# ------------------------------------------------------------------------- the check can fail
MUTATIONS = {
    "cmd": ("cmd: gdm report --quiet", "cmd: gdm report", "report.cmd"),
    "folded-cmd": ("--sampler ${item.sampler} --scale", "--sampler ${item.sampler} --guidance", "sample@"),
    "dep-dropped": ("unet/model.pt\n      - ${pipeline.runs_dir}/classifier/classifier.pt\n",
                    "unet/model.pt\n", "sample@cond-ddim-0.0.deps"),
    "out-path": ("${pipeline.runs_dir}/evaluator/evaluator.pt\n    metrics", "${pipeline.runs_dir}/evaluator/eval.pt\n    metrics",
                 "train-evaluator.outs"),
    "param-dropped": ("      - classifier_train\n", "", "train-classifier.params"),
    "upsample-flag-dropped": ("      --upsample ${pipeline.runs_dir}/upsampler/model.pt\n", "", "sample-up@"),
    "low-res-param-dropped": ("        - pipeline.models.${item}\n        - upsampler.low_resolution\n",
                              "        - pipeline.models.${item}\n", "train-low@cond.params"),
    "free-flag-dropped": ("--sampler ${item.sampler} --guidance free", "--sampler ${item.sampler}", "sample-free@"),
    "stage-renamed": ("  evaluate-ablation:\n", "  eval-ablation:\n", "only in dvc.yaml"),
    "plot-uncached": ("${pipeline.reports_dir}/ablation.png:\n          cache: false",
                      "${pipeline.reports_dir}/ablation.png:\n          cache: true", "need cache: false"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_compare_reports_a_mutated_dvc_yaml(tmp_path, name):
    old, new, expected = MUTATIONS[name]
    text = (ROOT / "dvc.yaml").read_text()
    assert old in text, f"mutation {name!r} no longer applies to dvc.yaml"
    root = _copy_project(tmp_path, dvc_text=text.replace(old, new, 1))
    problems = compare(root)
    assert any(expected in p for p in problems), problems


def test_compare_reports_metric_turned_into_out(tmp_path):
    """A metric declared under `outs` is a different stage (DVC will not show it)."""
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    ev = doc["stages"]["train-evaluator"]
    ev["outs"].append(ev.pop("metrics")[0])
    root = _copy_project(tmp_path, dvc_text=yaml.safe_dump(doc, sort_keys=False))
    problems = compare(root)
    assert any(p.startswith("train-evaluator.outs") for p in problems), problems
    assert any(p.startswith("train-evaluator.metrics") for p in problems), problems


# ---------------------------------------------------------------------------- known mismatches
def test_empty_ablations_are_rejected_at_load(tmp_path):
    """dvc.yaml always declares the ablation stages, so the config must declare at least the baseline."""
    from gdm.errors import ConfigError

    params = _repo_params()
    params["pipeline"]["ablations"] = {}
    with pytest.raises(ConfigError, match="pipeline.baseline 'base' is not one of pipeline.ablations"):
        compare(_copy_project(tmp_path, params=params))


def test_integer_scales_are_rejected_at_load(tmp_path):
    """DVC renders 1 as '1' but 1.0 as '1.0' in names and paths: whole-number scales must be floats."""
    from gdm.errors import ConfigError

    params = _repo_params()
    params["sample"]["scales"] = [0, 1]
    with pytest.raises(ConfigError, match=r"sample.scales: write the scales as floats, e.g. \[0.0, 1.0\]"):
        compare(_copy_project(tmp_path, params=params))
