"""End to end: the project's dvc.yaml runs under `dvc repro` in a fresh git repo.

One tiny project (repo dvc.yaml + a shrunken params.yaml) is built once per module: `git init`,
commit, `dvc init`, `dvc repro prepare` (works on a fresh clone), `dvc repro` (the whole DAG,
ablations included), a second `dvc repro` (nothing to do), `dvc metrics show`, then one stage
forced with MLflow tracking on. The tests check what each step left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `gdm` and `dvc` live there
SCALES = (0.0, 1.0)
ABLATIONS = ("base", "biggan")
ROW_KEYS = {"variant", "sampler", "steps", "scale", "num_samples", "fid", "sfid", "is", "precision",
            "recall", "accuracy", "features"}


def tiny_params() -> dict:
    """The repo's params.yaml, shrunk so every stage takes seconds on a CPU."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"]["out_dir"] = "data/prepared"
    p["train"].update(steps=4, batch_size=16, checkpoint_every=4, log_every=1, device="cpu")
    p["diffusion"]["diffusion_steps"] = 50
    p["classifier_train"].update(steps=4, batch_size=16, eval_every=4, checkpoint_every=4, log_every=1,
                                 device="cpu")
    p["evaluator"]["steps"] = 30
    p["sample"].update(num_samples=8, batch_size=8, chunk_size=8, respacing="5", scales=list(SCALES),
                       device="cpu", upsample_respacing="5")
    p["upsampler_train"].update(steps=4, batch_size=16, checkpoint_every=4, log_every=1, device="cpu")
    p["pipeline"].update(models={"cond": {}}, samplers=["ddim"], baseline="base", free_guidance=[],
                         upsampling_models=["cond"],
                         ablations={"base": {}, "biggan": {"unet.resblock_updown": True}})
    p["tracking"]["enabled"] = False  # switched on for one forced stage at the end
    return p


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1",
               MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="gdm test",
               GIT_AUTHOR_EMAIL="test@example.invalid", GIT_COMMITTER_NAME="gdm test",
               GIT_COMMITTER_EMAIL="test@example.invalid")
    return env


def _write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _run(root: Path, *cmd: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command in the project; on failure or timeout the message carries its output."""
    try:
        res = subprocess.run(cmd, check=False, cwd=root, env={**_env(), **(env or {})}, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(cmd)} ran past {timeout} s\n--- stdout\n{exc.stdout}"
                             f"\n--- stderr\n{exc.stderr}") from None
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}\n--- stdout\n{res.stdout}"
                             f"\n--- stderr\n{res.stderr}")
    return res


def _mlflow_runs(db: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> SimpleNamespace:
    if shutil.which("gdm", path=str(BIN)) is None or shutil.which("dvc", path=str(BIN)) is None:
        pytest.fail(f"`gdm` and `dvc` must be installed in {BIN} (pip install -e .)")
    root = tmp_path_factory.mktemp("dvc-project")
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = tiny_params()
    _write_params(root, params)
    _run(root, "git", "init", "-q")
    _run(root, "git", "add", "dvc.yaml", "params.yaml")
    _run(root, "git", "commit", "-q", "-m", "tiny gdm pipeline")
    _run(root, "dvc", "init", "-q")

    ns = SimpleNamespace(root=root)
    ns.prepare = _run(root, "dvc", "repro", "prepare")
    ns.prepared = sorted(p.name for p in (root / "data/prepared/digits").glob("*"))
    ns.runs_after_prepare = (root / "runs").exists()
    ns.lock_after_prepare = yaml.safe_load((root / "dvc.lock").read_text())

    ns.repro = _run(root, "dvc", "repro", timeout=900)
    ns.repro2 = _run(root, "dvc", "repro")
    ns.status = json.loads(_run(root, "dvc", "status", "--json").stdout)
    ns.metrics = json.loads(_run(root, "dvc", "metrics", "show", "--json").stdout)
    ns.eval_before = json.loads((root / "runs/eval/cond-ddim-1.0.json").read_text())
    ns.info_before = json.loads((root / "runs/eval-info/cond-ddim-1.0.json").read_text())

    # A `sample` param invalidates exactly the stages that list `sample` (then put back).
    _write_params(root, {**params, "sample": {**params["sample"], "seed": 1}})
    ns.status_sample_seed = json.loads(_run(root, "dvc", "status", "--json").stdout)
    _write_params(root, params)

    # Tracking is no stage's param: switching it on leaves every stage up to date.
    params["tracking"].update(enabled=True, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    _write_params(root, params)
    ns.status_tracking = json.loads(_run(root, "dvc", "status", "--json").stdout)
    ns.forced = _run(root, "dvc", "repro", "--force", "--single-item", "evaluate@cond-ddim-1.0")
    ns.eval_tracked = json.loads((root / "runs/eval/cond-ddim-1.0.json").read_text())
    ns.info_tracked = json.loads((root / "runs/eval-info/cond-ddim-1.0.json").read_text())
    return ns


# ------------------------------------------------------------------------------------ prepare
def test_prepare_alone_on_a_fresh_clone(project):
    assert "manifest.json" in project.prepared
    assert any(n.startswith("train-") and n.endswith(".parquet") for n in project.prepared)
    assert any(n.startswith("val-") and n.endswith(".parquet") for n in project.prepared)
    assert not project.runs_after_prepare, "dvc repro prepare ran more than prepare"
    assert set(project.lock_after_prepare["stages"]) == {"prepare"}


# --------------------------------------------------------------------------------- full repro
def test_repro_writes_every_output(project):
    r = project.root
    for variant in ("cond", *ABLATIONS):
        assert (r / f"runs/{variant}/unet/model.pt").is_file(), variant
    for f in ("runs/classifier/classifier.pt", "runs/evaluator/evaluator.pt"):
        assert (r / f).is_file(), f
    for scale in SCALES:
        assert list((r / f"runs/cond/samples/ddim-{scale}").glob("*.npz")), scale
        ev = json.loads((r / f"runs/eval/cond-ddim-{scale}.json").read_text())
        assert ev["num_samples"] == 8 and ev["fid"] >= 0.0
    for a in ABLATIONS:
        assert list((r / f"runs/{a}/samples/ddim-0.0").glob("*.npz")), a
        assert (r / f"runs/ablation-eval/{a}-ddim-0.0.json").is_file(), a
    assert (r / "reports/tradeoff.png").is_file() and (r / "reports/ablation.png").is_file()
    # the upsampling study: low-res model and classifier, upsampler, two-stage samples, Table-5 rows
    for f in ("runs/cond/unet-low/model.pt", "runs/classifier-low/classifier.pt", "runs/upsampler/model.pt"):
        assert (r / f).is_file(), f
    for scale in SCALES:
        assert len(list((r / f"runs/cond/samples-up/ddim-{scale}").glob("*.npz"))) == 1
        assert len(list((r / f"runs/cond/samples-up/ddim-{scale}/low").glob("*.npz"))) == 1
    table = json.loads((r / "reports/upsampling.json").read_text())["table5"]
    assert [row["row"] for row in table] == ["ADM", "ADM-G", "ADM-U", "ADM-G + ADM-U"]


def test_summary_has_one_row_per_variant_sampler_scale(project):
    rows = json.loads((project.root / "reports/summary.json").read_text())
    assert sorted((row["variant"], row["sampler"], row["scale"]) for row in rows) == [
        ("cond", "ddim", s) for s in SCALES
    ]
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["steps"] == 5 and row["num_samples"] == 8 and row["features"] == "evaluator"
        assert all(isinstance(row[k], float) for k in ("fid", "sfid", "is", "precision", "recall"))
        ev = json.loads((project.root / f"runs/eval/cond-ddim-{row['scale']}.json").read_text())
        assert row["fid"] == ev["fid"]


def test_ablation_report_has_delta_fid_against_the_baseline(project):
    rows = {row["variant"]: row for row in json.loads((project.root / "reports/ablation.json").read_text())}
    assert set(rows) == set(ABLATIONS)
    assert rows["base"]["delta_fid"] == 0.0
    assert rows["biggan"]["delta_fid"] == pytest.approx(rows["biggan"]["fid"] - rows["base"]["fid"])


def test_every_stage_ran_once(project):
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]
    expected = {"prepare", "train-classifier", "train-evaluator", "train@cond", "report", "ablation-report",
                "train-upsampler", "train-classifier-low", "train-low@cond", "upsampling-report"}
    expected |= {f"{k}@cond-ddim-{s}" for k in ("sample", "evaluate", "sample-up", "evaluate-up") for s in SCALES}
    expected |= {f"{k}@{a}" for k in ("train-ablation", "sample-ablation", "evaluate-ablation")
                 for a in ABLATIONS}
    assert set(lock) == expected
    assert "Running stage 'prepare'" not in project.repro.stdout  # already done, not rerun


# ---------------------------------------------------------------------------- reproducibility
def test_second_repro_has_nothing_to_do(project):
    assert "Running stage" not in project.repro2.stdout, project.repro2.stdout
    assert "up to date" in project.repro2.stdout
    assert project.status == {}


def test_metrics_show_lists_fid_per_eval_file(project):
    data = project.metrics[""]["data"]
    for scale in SCALES:
        ev = data[f"runs/eval/cond-ddim-{scale}.json"]["data"]
        assert isinstance(ev["fid"], float)
    assert data["runs/ablation-eval/biggan-ddim-0.0.json"]["data"]["fid"] >= 0.0


def test_params_invalidate_only_the_stages_that_list_them(project):
    assert project.status_tracking == {}
    changed = set(project.status_sample_seed)
    assert changed == ({f"sample@cond-ddim-{s}" for s in SCALES} | {f"sample-up@cond-ddim-{s}" for s in SCALES}
                       | {f"sample-ablation@{a}" for a in ABLATIONS})


# ------------------------------------------------------------------------------------- MLflow
def test_mlflow_run_recorded_when_tracking_is_on(project):
    assert project.info_before["mlflow_run_id"] is None
    run_id = project.info_tracked["mlflow_run_id"]
    assert run_id
    runs = _mlflow_runs(project.root / "mlflow.db")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    assert runs[0].info.run_id == run_id
    assert runs[0].data.tags.get("dvc.stage") == "evaluate@cond-ddim-1.0"
    assert runs[0].info.run_name == "cond/ddim5/scale1.0" and runs[0].data.params["gdm.variant"] == "cond"
    assert runs[0].data.metrics["fid"] == pytest.approx(project.eval_tracked["fid"])
    # Same inputs, same seed: the tracked re-run scores the samples identically.
    assert project.eval_tracked["fid"] == pytest.approx(project.eval_before["fid"], rel=1e-9)


# ------------------------------------------------------------------ the user's DVC journeys
@pytest.fixture(scope="module")
def journeys(project, s3_server) -> SimpleNamespace:
    """After the repro above: commit it, run an experiment with a changed param, go back with
    `git checkout` + `dvc checkout`, push to an S3 remote (moto) and `dvc pull` into a fresh clone."""
    root = project.root
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    _write_params(root, params)
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-q", "-m", "baseline results")
    ns = SimpleNamespace(root=root)
    ns.fid_before = json.loads((root / "runs/eval/cond-ddim-1.0.json").read_text())["fid"]
    ns.exp = _run(root, "dvc", "exp", "run", "evaluate@cond-ddim-1.0", "-S", "sample.seed=1", timeout=300)
    ns.fid_exp = json.loads((root / "runs/eval/cond-ddim-1.0.json").read_text())["fid"]
    _run(root, "git", "checkout", "--", ".")
    _run(root, "dvc", "checkout")
    ns.status_back = json.loads(_run(root, "dvc", "status", "--json").stdout)
    ns.fid_back = json.loads((root / "runs/eval/cond-ddim-1.0.json").read_text())["fid"]
    ns.untracked = _run(root, "git", "status", "--porcelain", "--untracked-files=all", "runs/eval",
                        "runs/ablation-eval").stdout

    bucket = f"gdm-dvc-{os.getpid()}"
    s3_server.client().create_bucket(Bucket=bucket)
    _run(root, "dvc", "remote", "add", "-d", "store", f"s3://{bucket}/dvc")
    _run(root, "dvc", "remote", "modify", "--local", "store", "endpointurl", s3_server.endpoint_url)
    _run(root, "dvc", "push", "-q", env=s3_server.env)
    _run(root, "git", "add", ".dvc/config")
    _run(root, "git", "commit", "-q", "-m", "S3 remote")
    clone = root.parent / "fresh-clone"
    _run(root.parent, "git", "clone", "-q", str(root), str(clone))
    _run(clone, "dvc", "remote", "modify", "--local", "store", "endpointurl", s3_server.endpoint_url)
    _run(clone, "dvc", "pull", "-q", env=s3_server.env)
    ns.clone = clone
    ns.status_clone = json.loads(_run(clone, "dvc", "status", "--json").stdout)
    return ns


def test_experiment_then_git_and_dvc_checkout_is_clean(journeys):
    assert journeys.fid_exp != journeys.fid_before  # the experiment really produced other samples
    assert journeys.status_back == {}, journeys.status_back
    assert journeys.fid_back == journeys.fid_before
    assert journeys.untracked == ""  # nothing unknown to git or DVC inside a stage's dependency folder


@pytest.mark.s3
def test_fresh_clone_pulls_from_s3_and_is_clean(journeys):
    assert journeys.status_clone == {}, journeys.status_clone
    assert (journeys.clone / "runs/cond/unet/model.pt").is_file()
    assert list((journeys.clone / "runs/cond/samples/ddim-1.0").glob("*.npz"))


def test_metric_files_are_numbers_only_and_plots_are_offline(project):
    data = project.metrics[""]["data"]
    for path, entry in data.items():
        flat = entry["data"]
        stack = [flat]
        while stack:  # nested dicts (reports/metrics.json rows) hold numbers too
            node = stack.pop()
            for k, v in node.items():
                assert isinstance(v, (dict, int, float)) and not isinstance(v, bool), (path, k, v)
                if isinstance(v, dict):
                    stack.append(v)
    rows = json.loads((project.root / "reports/metrics.json").read_text())
    assert set(rows) == {f"cond/ddim/scale{s}" for s in SCALES} and "fid" in rows["cond/ddim/scale1.0"]
    assert (project.root / "reports/losses.png").stat().st_size > 1000
