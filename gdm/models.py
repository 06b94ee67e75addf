"""Build networks from the typed config, and rebuild them from our checkpoints.

The config section's field names are the constructor keywords (`UNet(**cfg.unet, ...)`); the
image size and channels come from the prepared dataset's manifest, never typed twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gdm.config import ClassifierConfig, UNetConfig
from gdm.errors import CheckpointError
from gdm.io import load_checkpoint

FORMAT = "gdm-checkpoint-v1"


def unet_kwargs(cfg: UNetConfig, image_size: int, channels: int) -> dict[str, Any]:
    kw = cfg.model_dump()
    kw["channel_mult"] = tuple(kw["channel_mult"])
    kw["attention_resolutions"] = tuple(kw["attention_resolutions"])
    return dict(image_size=image_size, in_channels=channels, **kw)


def classifier_kwargs(cfg: ClassifierConfig, image_size: int, channels: int, num_classes: int) -> dict[str, Any]:
    kw = cfg.model_dump()
    kw["channel_mult"] = tuple(kw["channel_mult"])
    kw["attention_resolutions"] = tuple(kw["attention_resolutions"])
    return dict(image_size=image_size, in_channels=channels, out_channels=num_classes, **kw)


def build(kind: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    from gdm.nn import build_model

    return build_model(kind, kwargs)


def load_model(path: str | Path, *, use_ema: bool = True, kind: str | None = None,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from a gdm checkpoint (EMA weights by default when present)."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gdm checkpoint (format {ckpt.get('format')!r}, expected {FORMAT!r})")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {ckpt.get('kind')!r} model, expected a {kind!r} model")
    model = build(ckpt["kind"], ckpt["model_kwargs"])
    state = ckpt["model"]
    if use_ema and ckpt.get("ema"):
        rate = min(ckpt["ema"]) if ckpt.get("ema_use") is None else ckpt["ema_use"]
        state = ckpt["ema"][rate]
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), ckpt
