import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: on a shared 2-core machine, 2 OpenMP threads made the tiny evaluator's
    training 4-10x slower (barrier spinning when a core is taken by another process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
