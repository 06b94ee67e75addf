"""gdm.distributed and gdm.launch without torchrun: the single-process world is the same code path."""

from __future__ import annotations

import pytest
import torch

from gdm import distributed, launch
from gdm.distributed import DistributedError, World, shard
from gdm.train.batches import position_generators, position_noise


def test_shards_cover_the_batch_in_order_with_near_equal_sizes():
    for n in (1, 7, 16, 17):
        for size in range(1, min(n, 5) + 1):
            parts = [shard(n, r, size) for r in range(size)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_rank_slices_of_a_step_draw_the_one_process_draws():
    full = position_noise(position_generators(0, 5, range(16)), (1, 2, 2))
    split = torch.cat([position_noise(position_generators(0, 5, shard(16, r, 3)), (1, 2, 2)) for r in range(3)])
    assert torch.equal(full, split)  # row j's noise depends on (seed, step, j) only


def test_single_process_world_is_a_no_op(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    w = World()
    x = torch.arange(3.0)
    assert w.is_main and not w.active
    assert w.all_reduce_sum(x) is x and torch.equal(w.all_gather_cat(x), x)
    assert w.broadcast_object({"a": 1}) == {"a": 1} and w.on_main(lambda: 5, "test") == 5
    w.check_same({"x": x}, "test")
    model = torch.nn.Linear(2, 2)
    assert w.wrap(model, torch.device("cpu")) is model
    assert not distributed.launched() and not launch.wanted(1) and launch.wanted(2)


def test_launched_ranks_do_not_relaunch_and_bad_timeouts_are_named(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched() and not launch.wanted(4)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(DistributedError, match="GDM_DIST_TIMEOUT='soon'"):
        distributed.timeout_seconds()


def test_more_ranks_than_examples_is_refused(tmp_path):
    from gdm.errors import ConfigError
    from gdm.train.diffusion import check_world

    with pytest.raises(ConfigError, match="train.batch_size is 2 .* 4 ranks"):
        check_world(2, World(0, 4), "train.batch_size")


def test_torchrun_command_and_child_environment(monkeypatch):
    cmd = launch.torchrun_command(3, ["train", "--variant", "cond"])
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3"]
    assert cmd[-4:] == ["gdm", "train", "--variant", "cond"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = launch.child_env(2, "cpu", "parent123")
    assert env["GDM_PARENT_RUN_ID"] == "parent123" and int(env["OMP_NUM_THREADS"]) >= 1


def test_nproc_keys_are_validated_and_not_fingerprinted(tmp_path):
    from gdm.errors import ConfigError
    from gdm.train.classifier import NOT_FINGERPRINTED as CLF
    from gdm.train.diffusion import NOT_FINGERPRINTED as UNET
    from tests.helpers import tiny_config

    assert tiny_config(tmp_path, train={"nproc": 4}).train.nproc == 4
    with pytest.raises(ConfigError, match="train.nproc"):
        tiny_config(tmp_path, train={"nproc": 0})
    assert "train.nproc" in UNET and "classifier_train.nproc" in CLF  # a run resumes under any world size


def test_cuda_launch_needs_a_device_per_process():
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    from gdm.errors import GdmError

    with pytest.raises(GdmError, match="CUDA is not available"):
        launch.check_devices(2, "cuda")


def test_a_failed_relaunch_raises_the_ranks_messages(monkeypatch, tmp_path):
    import sys

    from tests.helpers import tiny_config

    script = ("import sys; print('torchrun noise', file=sys.stderr); "
              "print('error (rank 1/2): data.path /x: not found', file=sys.stderr); "
              "print('  second line of it', file=sys.stderr); print('other', file=sys.stderr); sys.exit(2)")
    monkeypatch.setattr(launch, "torchrun_command", lambda n, args: [sys.executable, "-c", script])
    with pytest.raises(launch.LaunchError) as err:
        launch.run_stage(tiny_config(tmp_path), "train", [], nproc=2, device="cpu")
    msg = str(err.value)
    assert "2 processes (torchrun) failed (exit 2)" in msg
    assert "error (rank 1/2): data.path /x: not found\n  second line of it" in msg and "other" not in msg
