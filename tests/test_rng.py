"""Seeded work on torch's global generator stays seeded while other threads of the process draw."""

import threading

import torch

from gdm.models import build
from gdm.rng import draws_from_global_rng, seeded, step_rng

KW = {"image_size": 8, "in_channels": 1, "model_channels": 32, "channel_mult": (1,), "num_res_blocks": 1,
      "attention_resolutions": (), "num_classes": 10}


def _weights(seed):
    with seeded(seed):
        return torch.cat([p.detach().flatten() for p in build("unet", KW).parameters()])


def test_seeded_initialisation_is_the_same_while_another_thread_builds_and_draws():
    expected = _weights(0)
    stop = threading.Event()

    def noisy():  # what a concurrent stage does: builds networks, and its dropout steps draw
        while not stop.is_set():
            build("unet", KW)
            with step_rng(123, True):
                torch.rand(1000)

    other = threading.Thread(target=noisy, daemon=True)
    other.start()
    try:
        got = [_weights(0) for _ in range(20)]
    finally:
        stop.set()
        other.join(10)
    assert all(torch.equal(g, expected) for g in got)


def test_seeded_leaves_the_global_generator_as_it_was_and_only_dropout_counts_as_drawing():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    _weights(1)
    assert torch.equal(torch.get_rng_state(), state)
    net = build("unet", KW)
    assert not draws_from_global_rng(net)
    assert draws_from_global_rng(build("unet", {**KW, "dropout": 0.1}))
    state = torch.get_rng_state()
    with step_rng(7, False):  # a step that draws nothing neither seeds nor locks
        assert torch.equal(torch.get_rng_state(), state)
    with step_rng(7, True):
        torch.manual_seed(7)
        a = torch.rand(3)
    with step_rng(7, True):
        assert torch.equal(torch.rand(3), a)
