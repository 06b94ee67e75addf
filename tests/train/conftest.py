import pytest

from gdm.data.prepare import prepare_dataset
from tests.helpers import tiny_config


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return prepare_dataset(tiny_config(root).data)
