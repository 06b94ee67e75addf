"""Shared helpers for the gdm.nn tests (a uniquely named module, not a conftest)."""

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
