"""What a diffusion training run fits: the base UNet (`gdm train`) or the ADM-U upsampler
(`gdm train-upsampler`). One trainer (`gdm.train.diffusion.train_diffusion`) serves both; a target
names its config sections, its network and the model inputs it computes from each batch.

- `UNET`: sections `unet` + `train`; the batch at `train.resolution` (area-downsampled when set).
- `UPSAMPLER`: sections `upsampler` + `upsampler_train`; x0 at upsampler_train.resolution (or as
  prepared) and `low_res` = x0 area-downsampled to upsampler.low_resolution, as guided-diffusion's
  super_res_train does (no noise or blur on the conditioning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gdm.config import Config
from gdm.data.lowres import area_downsample


@dataclass(frozen=True)
class Target:
    kind: str  # checkpoint/model kind: "unet" | "superres"
    net: str  # config section of the network
    train: str  # config section of the recipe

    def net_config(self, cfg: Config):
        return getattr(cfg, self.net)

    def train_config(self, cfg: Config):
        return getattr(cfg, self.train)

    def resolution(self, cfg: Config, manifest) -> int:
        return self.train_config(cfg).resolution or manifest.resolution

    def model_kwargs(self, cfg: Config, manifest) -> dict[str, Any]:
        from gdm.models import unet_kwargs

        kw = unet_kwargs(self.net_config(cfg), self.resolution(cfg, manifest), manifest.channels)
        if self.kind == "superres":
            kw["large_size"] = kw.pop("image_size")
            kw["small_size"] = kw.pop("low_resolution") or cfg.low_resolution()
        return kw

    def inputs(self, cfg: Config, manifest, x0: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training images at this target's resolution, and the extra model inputs computed from them."""
        x0 = area_downsample(x0, self.resolution(cfg, manifest))
        if self.kind == "superres":
            return x0, {"low_res": area_downsample(x0, cfg.low_resolution())}
        return x0, {}


UNET = Target("unet", "unet", "train")
UPSAMPLER = Target("superres", "upsampler", "upsampler_train")
