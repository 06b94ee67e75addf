import numpy as np
import pytest
from scipy.spatial.distance import cdist

from gdm.errors import GdmError
from gdm.metrics import knn_radii, precision_recall


def _col(values):
    return np.asarray(values, dtype=np.float64)[:, None]


def test_identical_sets_give_one_one():
    x = np.random.default_rng(0).standard_normal((50, 8))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_far_apart_sets_give_zero_zero():
    x = np.random.default_rng(1).standard_normal((50, 8))
    assert precision_recall(x, x + 1000.0) == (0.0, 0.0)


def test_radii_are_squared_kth_neighbour_distances_excluding_self():
    np.testing.assert_array_equal(knn_radii(_col([0, 1, 2, 3]), k=3), [9, 4, 4, 9])
    np.testing.assert_array_equal(knn_radii(_col([0, 1, 2, 3]), k=1), [1, 1, 1, 1])


def test_hand_computed_ties_on_the_radius_count_as_inside():
    # Radii (squared, k=3): refs {0,1,2,3} -> [9,4,4,9]; samples {6,7,8,9} -> [9,4,4,9].
    # Sample 6 is at squared distance 9 from ref 3, exactly ref 3's radius (and vice versa);
    # every other pair is outside. Membership uses <=, so P = R = 1/4 (with < it would be 0).
    refs, samples = _col([0, 1, 2, 3]), _col([6, 7, 8, 9])
    assert precision_recall(samples, refs) == (0.25, 0.25)


def test_hand_computed_argument_order():
    # Samples {6,7,8,20}: radii [196,169,144,196]; only sample 6 lies in a reference ball
    # (tie with ref 3), but every reference lies in sample 6's ball -> P = 1/4, R = 1.
    refs, samples = _col([0, 1, 2, 3]), _col([6, 7, 8, 20])
    assert precision_recall(samples, refs) == (0.25, 1.0)
    assert precision_recall(refs, samples) == (1.0, 0.25)


def _brute_force(s, r, k=3):
    def radii(x):
        d = cdist(x, x, "sqeuclidean")
        np.fill_diagonal(d, np.inf)
        return np.sort(d, axis=1)[:, k - 1]

    d = cdist(s, r, "sqeuclidean")
    return np.mean(np.any(d <= radii(r)[None], 1)), np.mean(np.any(d <= radii(s)[:, None], 0))


def test_matches_brute_force_and_blocking_does_not_change_results():
    rng = np.random.default_rng(2)
    r = rng.standard_normal((300, 16))
    s = rng.standard_normal((200, 16)) * 1.3 + 0.4
    want = _brute_force(s, r)
    got = precision_recall(s, r)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < got[0] < 1 and 0 < got[1] < 1
    tiny_blocks = precision_recall(s, r, max_block_bytes=8 * 300 * 7)  # 7 rows per block
    assert tiny_blocks == got


def test_bad_inputs():
    with pytest.raises(GdmError, match="k < N"):
        knn_radii(np.zeros((3, 2)), k=3)
    with pytest.raises(GdmError, match="dims differ"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
