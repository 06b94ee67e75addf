import pytest
import yaml

from tests.flows.servers import prefect_server  # noqa: F401  (a real `prefect server`, session scope)
from tests.helpers import TINY
from tests.tracking_fixtures import mlflow_template_db_fixture  # noqa: F401


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_params(root, mlflow_db, **sections) -> str:
    """A tiny params.yaml under `root` whose every output (and MLflow store) lives under `root`."""
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["data"] = {"out_dir": str(root / "prepared"), "name": "digits"}
    raw["evaluator"] = {"steps": 60, "batch_size": 64}
    raw["sample"] = {**raw["sample"], "scales": [0.0, 2.0]}
    raw["eval"] = {"cache_dir": str(root / "cache"), "kid_subset_size": 4, "kid_subsets": 2}
    raw["tracking"] = {"tracking_uri": f"sqlite:///{mlflow_db}", "artifact_location": str(root / "mlartifacts"),
                       "experiment": "gdm-test"}
    raw["pipeline"] = {"runs_dir": str(root / "runs"), "reports_dir": str(root / "reports"),
                       "models": {"cond": {}}, "baseline": "base", "stage_threads": 1,
                       "ablation_base": {"unet.resblock_updown": False},
                       "ablations": {"base": {}, "biggan": {"unet.resblock_updown": True}}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)
