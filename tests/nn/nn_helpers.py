"""Shared helpers for the gdm.nn tests (a uniquely named module, not a conftest)."""

import os

import torch


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (zero-initialised ones included) seeded nonzero values:
    norm weights 1 + N(0, 0.1), biases N(0, 0.1), other weights N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
            if p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.1 * z)
            elif p.ndim == 1:
                p.copy_(0.1 * z)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(z / fan_in**0.5)
    return module


def tiny_unet_kwargs(**overrides):
    kw = {"image_size": 16, "in_channels": 3, "model_channels": 32, "channel_mult": (1, 2),
          "num_res_blocks": 1, "attention_resolutions": (8,), "num_head_channels": 32}
    kw.update(overrides)
    return kw


# ADM.md "Released models" (exact parameter counts of the released checkpoints)
TABLE = {
    "adm-64": 295_904_454,
    "adm-128": 421_529_606,
    "adm-256": 553_838_086,
    "adm-256-uncond": 552_814_086,
    "adm-512": 558_997_638,
    "adm-lsun": 552_814_086,
    "adm-upsampler-64-256": 311_795_910,
    "adm-upsampler-128-512": 308_835_270,
    "adm-classifier-64": 65_438_568,
    "adm-classifier-128": 42_568_040,
    "adm-classifier-256": 54_096_360,
    "adm-classifier-512": 54_448_360,
}


class Payload:
    """Unpickling this would create a directory: a stand-in for arbitrary code execution."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))
