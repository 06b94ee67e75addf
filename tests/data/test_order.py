"""The training order is a pure function of (seed, step), rank slices partition the global batch."""

import pytest
import torch

from gdm.data.order import StepOrder, epoch_generator, flip_mask, rank_slice
from gdm.diffusion.noise import sample_seed


def test_single_window_is_the_pre_streaming_full_shuffle():
    # The order before streaming (BatchOrder): epoch e = randperm(n) from a generator seeded by
    # sample_seed(seed ^ 0x5EED, e); step k = slice k mod (n // B). Digits batches must not change.
    n, B, seed = 103, 16, 7
    order = StepOrder([40, 40, 23], B, seed, window=1000)
    for step in (0, 1, 5, 6, 7, 13):
        e, k = divmod(step, n // B)
        old = torch.randperm(n, generator=torch.Generator().manual_seed(sample_seed(seed ^ 0x5EED, e)))
        assert torch.equal(order.global_rows(step), old[k * B : (k + 1) * B])


def test_epochs_visit_every_row_once_and_windows_hold_whole_blocks():
    blocks = [5, 7, 3, 9, 6, 4, 8]  # 42 rows
    order = StepOrder(blocks, 6, seed=3, window=10)
    perm = order.epoch_permutation(2)
    assert sorted(perm.tolist()) == list(range(42))
    starts = torch.tensor([0, *blocks]).cumsum(0)
    block_of = torch.bucketize(perm, starts[1:], right=True)
    # Rebuild the windows as the docstring says: permuted blocks, grouped until >= window rows.
    g = epoch_generator(3, 2)
    border = torch.randperm(len(blocks), generator=g).tolist()
    pos, windows, cur, rows = 0, [], [], 0
    for b in border:
        cur.append(b)
        rows += blocks[b]
        if rows >= 10:
            windows.append(cur)
            cur, rows = [], 0
    windows += [cur] if cur else []
    for w in windows:
        size = sum(blocks[b] for b in w)
        assert set(block_of[pos : pos + size].tolist()) == set(w)  # a window is exactly its blocks' rows
        pos += size
    assert pos == 42
    assert not torch.equal(order.epoch_permutation(3), perm)  # a new shuffle every epoch


def test_order_is_a_pure_function_of_seed_and_step():
    a, b = StepOrder([11] * 9, 8, seed=1, window=20), StepOrder([11] * 9, 8, seed=1, window=20)
    steps = [30, 0, 12, 31, 5, 12]
    first = [a.global_rows(s) for s in steps]
    second = [b.global_rows(s) for s in reversed(steps)][::-1]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(StepOrder([11] * 9, 8, seed=2, window=20).global_rows(0), first[1])


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_rank_slices_are_disjoint_and_union_is_the_global_batch(world):
    order = StepOrder([13, 13, 13, 13], 10, seed=0, window=20)
    for step in range(9):
        parts = [order.rows(step, r, world) for r in range(world)]
        assert torch.equal(torch.cat(parts), order.global_rows(step))
        assert sum(len(p) for p in parts) == 10 and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_rank_slice_rejects_impossible_worlds():
    with pytest.raises(ValueError, match="rank 2"):
        rank_slice(8, 2, 2)
    with pytest.raises(ValueError, match="cannot be split"):
        rank_slice(2, 0, 3)


def test_flips_depend_on_seed_and_step_only():
    assert torch.equal(flip_mask(0, 4, 32), flip_mask(0, 4, 32))
    assert not torch.equal(flip_mask(0, 4, 32), flip_mask(0, 5, 32))
    assert 0 < int(flip_mask(0, 4, 1000).sum()) < 1000
