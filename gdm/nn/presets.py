"""Named presets for every released ADM network (ADM.md sec. 1, "Released models").

Each preset holds the exact constructor keyword arguments of our UNet / SuperResUNet /
EncoderUNet, the parameter count of the released checkpoint (a test oracle), and the diffusion
recipe it was trained with (schedule, steps, fp16) for information; gdm.nn never builds diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gdm.errors import ConfigError
from gdm.nn.classifier import EncoderUNet
from gdm.nn.unet import SuperResUNet, UNet

KINDS = {"unet": UNet, "superres": SuperResUNet, "classifier": EncoderUNet}


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """ADM's per-level width multipliers for the ImageNet resolutions (ADM.md sec. 1)."""
    table = {
        64: (1, 2, 3, 4),
        128: (1, 1, 2, 3, 4),
        256: (1, 1, 2, 2, 4, 4),
        512: (0.5, 1, 1, 2, 2, 4, 4),
    }
    if image_size not in table:
        raise ConfigError(f"no default channel_mult for image_size={image_size}; "
                          f"known sizes {sorted(table)}: pass channel_mult explicitly")
    return table[image_size]


@dataclass(frozen=True)
class Preset:
    """A released (or custom) network: `KINDS[kind](**kwargs)` builds it."""

    name: str
    kind: str
    kwargs: dict[str, Any]
    description: str = ""
    params: int | None = None  # parameter count of the released checkpoint
    recipe: dict[str, Any] = field(default_factory=dict)  # schedule / steps / fp16 (info only)


_COMMON = {
    "in_channels": 3, "num_res_blocks": 2, "attention_resolutions": (32, 16, 8),
    "learn_sigma": True, "use_scale_shift_norm": True, "resblock_updown": True,
}


def _unet(size: int, **kw: Any) -> dict[str, Any]:
    return {**_COMMON, "image_size": size, "channel_mult": default_channel_mult(size), **kw}


def _classifier(size: int) -> dict[str, Any]:
    return {
        "image_size": size, "in_channels": 3, "model_channels": 128, "out_channels": 1000,
        "channel_mult": default_channel_mult(size), "num_res_blocks": 4 if size == 64 else 2,
        "attention_resolutions": (32, 16, 8), "num_head_channels": 64,
        "use_scale_shift_norm": True, "resblock_updown": True, "pool": "attention",
    }


def _recipe(schedule: str, fp16: bool = True) -> dict[str, Any]:
    return {"noise_schedule": schedule, "diffusion_steps": 1000, "use_fp16": fp16}


_SR_MULT = (1, 1, 2, 2, 4, 4)  # the upsamplers use this at 256 and at 512

_ALL = [
    Preset("adm-64", "unet", _unet(64, model_channels=192, num_res_blocks=3, num_head_channels=64,
                                   dropout=0.1, num_classes=1000, attention_order="new"),
           "ImageNet 64x64 class-conditional (64x64_diffusion.pt)", 295_904_454,
           _recipe("cosine")),
    Preset("adm-128", "unet", _unet(128, model_channels=256, num_heads=4, num_classes=1000),
           "ImageNet 128x128 class-conditional (128x128_diffusion.pt)", 421_529_606,
           _recipe("linear")),
    Preset("adm-256", "unet", _unet(256, model_channels=256, num_head_channels=64,
                                    num_classes=1000),
           "ImageNet 256x256 class-conditional (256x256_diffusion.pt)", 553_838_086,
           _recipe("linear")),
    Preset("adm-256-uncond", "unet", _unet(256, model_channels=256, num_head_channels=64),
           "ImageNet 256x256 unconditional (256x256_diffusion_uncond.pt)", 552_814_086,
           _recipe("linear")),
    Preset("adm-512", "unet", _unet(512, model_channels=256, num_head_channels=64,
                                    num_classes=1000),
           "ImageNet 512x512 class-conditional, trained in fp32 (512x512_diffusion.pt)",
           558_997_638, _recipe("linear", fp16=False)),
    Preset("adm-lsun", "unet", _unet(256, model_channels=256, num_head_channels=64, dropout=0.1),
           "LSUN bedroom/cat/horse 256x256 unconditional (lsun_*.pt)", 552_814_086,
           _recipe("linear")),
    Preset("adm-upsampler-64-256", "superres",
           {**_unet(256, model_channels=192, num_heads=4, num_classes=1000,
                    channel_mult=_SR_MULT),
            "large_size": 256, "small_size": 64},
           "ImageNet 64->256 class-conditional upsampler (64_256_upsampler.pt)", 311_795_910,
           _recipe("linear")),
    Preset("adm-upsampler-128-512", "superres",
           {**_unet(512, model_channels=192, num_head_channels=64, num_classes=1000,
                    attention_resolutions=(32, 16), channel_mult=_SR_MULT),
            "large_size": 512, "small_size": 128},
           "ImageNet 128->512 class-conditional upsampler (128_512_upsampler.pt; the parameter "
           "count includes a 1000-class label embedding)", 308_835_270,
           _recipe("linear")),
    Preset("adm-classifier-64", "classifier", _classifier(64),
           "ImageNet 64x64 noisy classifier (64x64_classifier.pt)", 65_438_568, _recipe("cosine")),
    Preset("adm-classifier-128", "classifier", _classifier(128),
           "ImageNet 128x128 noisy classifier (128x128_classifier.pt)", 42_568_040,
           _recipe("linear")),
    Preset("adm-classifier-256", "classifier", _classifier(256),
           "ImageNet 256x256 noisy classifier (256x256_classifier.pt)", 54_096_360,
           _recipe("linear")),
    Preset("adm-classifier-512", "classifier", _classifier(512),
           "ImageNet 512x512 noisy classifier (512x512_classifier.pt)", 54_448_360,
           _recipe("linear")),
]
for _p in _ALL:  # superres presets carry large_size instead of image_size
    if _p.kind == "superres":
        _p.kwargs.pop("image_size")

PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_model(kind: str, kwargs: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """Build `KINDS[kind](**kwargs)` with its parameters created on `device`."""
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {tuple(KINDS)}")
    try:
        with torch.device(device):
            return KINDS[kind](**kwargs)
    except TypeError as exc:  # unknown / missing keyword
        raise ConfigError(f"bad model_kwargs for kind {kind!r}: {exc}") from None


def build_preset(name: str, device: str | torch.device = "meta") -> nn.Module:
    """Build a preset's network; on the default "meta" device it allocates nothing (instant)."""
    preset = get_preset(name)
    return build_model(preset.kind, preset.kwargs, device)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (works on meta tensors)."""
    return sum(p.numel() for p in module.parameters())
