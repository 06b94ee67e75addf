"""gdm.models.load_model: a checkpoint rebuilds the same network whichever way the empty one is made."""

import subprocess
import sys

import pytest
import torch

from gdm import models
from gdm.io import save_checkpoint
from gdm.nn import build_model
from gdm.nn.adm_import import FORMAT

UNET = {"image_size": 8, "in_channels": 1, "model_channels": 32, "channel_mult": (1,), "num_res_blocks": 1,
        "attention_resolutions": (8,), "num_classes": 10}
CLASSIFIER = {"image_size": 8, "in_channels": 1, "model_channels": 32, "out_channels": 10, "channel_mult": (1,),
              "num_res_blocks": 1, "attention_resolutions": (8,), "num_head_channels": 16}


@pytest.fixture
def checkpoints(tmp_path):
    paths = {}
    for kind, kw in (("unet", UNET), ("classifier", CLASSIFIER)):
        torch.manual_seed(3)
        net = build_model(kind, kw)
        paths[kind] = tmp_path / f"{kind}.pt"
        save_checkpoint(paths[kind], {"format": FORMAT, "kind": kind, "model_kwargs": kw, "model": net.state_dict()})
    return paths


@pytest.mark.parametrize("kind", ["unet", "classifier"])
def test_cpu_and_meta_rebuilds_load_the_same_weights_and_leave_the_generator(checkpoints, monkeypatch, kind):
    saved = torch.load(checkpoints[kind], weights_only=True)["model"]
    state = torch.get_rng_state()
    cpu, _ = models.load_model(checkpoints[kind])  # small: built on the CPU
    assert torch.equal(torch.get_rng_state(), state)  # its initial draws did not move the global generator
    monkeypatch.setattr(models, "META_BUILD_MIN_WEIGHTS", 0)
    meta, _ = models.load_model(checkpoints[kind])
    for name, net in (("cpu", cpu), ("meta", meta)):
        got = net.state_dict()
        assert got.keys() == saved.keys(), name
        assert all(torch.equal(got[k], saved[k]) for k in saved), name


def test_loading_a_small_network_imports_no_dynamo(checkpoints):
    """The meta device's first Python-reference op imports torch._dynamo (~2.5 s per `gdm sample` process)."""
    code = ("import sys; from gdm.models import load_model; "
            f"load_model({str(checkpoints['unet'])!r}); load_model({str(checkpoints['classifier'])!r}); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
