"""Noisy classifier p(y | x_t, t) (Dhariwal & Nichol 2021, sec. 4.1; ADM.md sec. 2).

The UNet's down path and middle block (time embedding, no label embedding), then a head:
  adaptive:   GN - SiLU - global average pool - zero-initialised 1x1 conv
  attention:  GN - SiLU - CLIP-style attention pool (released classifiers; `out.2.*`)
  spatial:    means of every block output concatenated - Linear(., 2048) - ReLU - Linear
  spatial_v2: as spatial with GN(32, 2048) - SiLU instead of ReLU
Under autocast the head runs with autocast off in x's dtype; logits have x's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gdm.errors import ConfigError, GdmError
from gdm.nn.attention import AttentionPool2d
from gdm.nn.layers import GroupNorm32, autocast_off, timestep_embedding, zero_module
from gdm.nn.unet import build_down_path, build_middle_block, check_architecture, check_timesteps

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


class EncoderUNet(nn.Module):
    """Half UNet + pooling head: logits [N, out_channels] from (x_t, t)."""

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        channel_mult: Sequence[float],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        conv_resample: bool = True,
        dropout: float = 0.0,
        attention_order: str = "legacy",
        pool: str = "attention",
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"pool={pool!r}: expected one of {POOLS}")
        if pool == "attention" and num_head_channels == -1:
            raise ConfigError("pool='attention' needs num_head_channels (e.g. 64), got -1")
        channel_mult = tuple(channel_mult)
        check_architecture(image_size, model_channels, channel_mult, attention_resolutions)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.model_channels, self.pool = model_channels, pool
        emb_dim = 4 * model_channels
        res = {"emb_channels": emb_dim, "dropout": dropout,
               "use_scale_shift_norm": use_scale_shift_norm, "use_checkpoint": use_checkpoint}
        attn = {"num_heads": num_heads, "num_head_channels": num_head_channels,
                "attention_order": attention_order, "use_checkpoint": use_checkpoint}
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.input_blocks, chans, ch, resolution = build_down_path(
            in_channels=in_channels, image_size=image_size, model_channels=model_channels,
            channel_mult=channel_mult, num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions, resblock_updown=resblock_updown,
            conv_resample=conv_resample, res=res, attn=attn,
        )
        self.middle_block = build_middle_block(ch, res, attn)
        feature_size = sum(chans) + ch  # every block output's mean, then the middle block's
        if pool == "adaptive":
            self.out = nn.Sequential(
                GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(nn.Conv2d(ch, out_channels, 1)), nn.Flatten(),
            )
        elif pool == "attention":
            self.out = nn.Sequential(
                GroupNorm32(ch), nn.SiLU(),
                AttentionPool2d(resolution, ch, num_head_channels, out_channels),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(
                nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels)
            )
        else:
            self.out = nn.Sequential(
                nn.Linear(feature_size, 2048), GroupNorm32(2048), nn.SiLU(),
                nn.Linear(2048, out_channels),
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, H, W] noisy images, t: [N] timesteps -> logits [N, out_channels]."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise GdmError(f"x must have shape [N, {self.in_channels}, H, W], got "
                           f"{tuple(x.shape)}")
        t = check_timesteps(t, x.shape[0])
        w = self.time_embed[0].weight
        with autocast_off(x.device.type):
            emb = self.time_embed(timestep_embedding(t, self.model_channels).to(w.dtype))
        spatial = self.pool.startswith("spatial")
        means, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                means.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        with autocast_off(x.device.type):
            if spatial:
                means.append(h.to(x.dtype).mean(dim=(2, 3)))
                return self.out(torch.cat(means, dim=-1))
            return self.out(h.to(x.dtype))
