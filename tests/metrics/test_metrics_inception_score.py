import numpy as np
import pytest

from gdm.errors import GdmError
from gdm.metrics import inception_score


def _one_hots(labels, k):
    return np.eye(k)[np.asarray(labels)]


def test_uniform_predictions_give_one():
    assert inception_score(np.full((100, 10), 0.1))[0] == pytest.approx(1.0)
    assert inception_score(np.zeros((100, 10)), kind="logits")[0] == pytest.approx(1.0)


@pytest.mark.parametrize("k", [2, 10, 1000])
def test_balanced_one_hots_give_k(k):
    mean, std = inception_score(_one_hots(np.arange(3 * k) % k, k))
    assert mean == pytest.approx(k) and std == 0.0


def test_logits_go_through_softmax():
    logits = 100.0 * _one_hots(np.arange(40) % 4, 4)
    assert inception_score(logits)[0] == pytest.approx(4.0, rel=1e-6)


def test_consecutive_unshuffled_splits():
    # First split: balanced over 10 classes (IS 10); second: one class only (IS 1).
    first = _one_hots(np.arange(5000) % 10, 10)
    second = _one_hots(np.zeros(5000, dtype=int), 10)
    mean, std = inception_score(np.concatenate([first, second]))
    assert mean == pytest.approx(5.5) and std == pytest.approx(4.5)


def test_remainder_forms_its_own_split():
    probs = np.concatenate([_one_hots(np.arange(5), 5), _one_hots([0, 1], 5)])
    mean, std = inception_score(probs, split_size=5)
    assert mean == pytest.approx((5 + 2) / 2) and std == pytest.approx(1.5)


def test_fewer_than_split_size_is_one_split():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 7)) * 3
    assert inception_score(logits) == inception_score(logits, split_size=300)
    assert inception_score(logits)[1] == 0.0


def test_bad_input():
    with pytest.raises(GdmError, match="N x K"):
        inception_score(np.zeros(5))
    with pytest.raises(GdmError, match="kind"):
        inception_score(np.zeros((2, 2)), kind="prob")
