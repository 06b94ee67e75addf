import pytest
from nn_helpers import randomize as _randomize


@pytest.fixture
def randomize():
    """Seeded nonzero re-initialisation of every parameter: randomize(module, seed=0)."""
    return _randomize
