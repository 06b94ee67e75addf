"""The low-resolution view of an image batch, as ADM-U makes it.

guided-diffusion's super_res_train.py conditions its upsamplers on
`F.interpolate(high_res_batch, small_size, mode="area")` of the float [-1, 1] training batch (after
the loader's random flip); nothing is noised or blurred. gdm uses the same view to train the
low-resolution base models and classifier of the upsampling study (`train.resolution`), so the
base model learns exactly the distribution the upsampler is conditioned on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def area_downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, size, size] by area averaging (an exact box filter for integer factors)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if size > min(x.shape[-2:]):
        raise ValueError(f"area_downsample: size {size} is above the image size {tuple(x.shape[-2:])}")
    return F.interpolate(x, size=(size, size), mode="area")
