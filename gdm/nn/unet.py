"""The ADM UNet (Dhariwal & Nichol 2021, sec. 3; ADM.md sec. 1) and its super-resolution variant.

Layout (names match the released checkpoints): `time_embed.{0,2}`, optional `label_emb`,
`input_blocks.{i}.{j}` (1 + L*nrb + (L-1) entries), `middle_block.{0,1,2}` (ResBlock, attention,
ResBlock), `output_blocks.{i}.{j}` (L*(nrb+1) entries, each taking a skip from the down path),
`out.{0,2}` (GN, conv). Zero-initialised: last conv of every ResBlock, every attention `proj_out`
and the output conv, so a fresh UNet outputs exact zeros.

Mixed precision: run under `torch.autocast` (bf16 on CPU, bf16/fp16 on CUDA). GroupNorm and the
attention softmax always compute in float32; the timestep-embedding MLP and the output head
(`out`) run with autocast off in the input's dtype, so the output has the dtype of `x`
(float32 for float32 inputs, also under autocast), as in the reference's fp16 mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gdm.errors import ConfigError, GdmError
from gdm.nn.attention import AttentionBlock
from gdm.nn.layers import (
    GROUPS,
    Downsample,
    GroupNorm32,
    ResBlock,
    TimestepSequential,
    Upsample,
    autocast_off,
    timestep_embedding,
    zero_module,
)


def check_architecture(image_size: int, model_channels: int, channel_mult: Sequence[float],
                       attention_resolutions: Sequence[int]) -> list[int]:
    """Validate the level widths and attention resolutions; return the feature resolutions."""
    if not channel_mult:
        raise ConfigError("channel_mult must name at least one level, e.g. (1, 2, 2)")
    for mult in channel_mult:
        width = int(mult * model_channels)
        if width < GROUPS or width % GROUPS:
            raise ConfigError(
                f"channel_mult entry {mult} x model_channels {model_channels} = {width} channels: "
                f"GroupNorm({GROUPS}) needs a positive multiple of {GROUPS}"
            )
    levels = len(channel_mult)
    if image_size % 2 ** (levels - 1):
        raise ConfigError(
            f"image_size={image_size} is not divisible by 2**{levels - 1} "
            f"({levels} levels in channel_mult={tuple(channel_mult)})"
        )
    resolutions = [image_size // 2**i for i in range(levels)]
    unknown = [r for r in attention_resolutions if int(r) not in resolutions]
    if unknown:
        raise ConfigError(
            f"attention_resolutions={tuple(attention_resolutions)}: {unknown} are not feature "
            f"resolutions of this UNet (pixel resolutions, here {resolutions})"
        )
    return resolutions


def build_down_path(*, in_channels: int, image_size: int, model_channels: int,
                    channel_mult: Sequence[float], num_res_blocks: int,
                    attention_resolutions: Sequence[int], resblock_updown: bool,
                    conv_resample: bool, res: dict, attn: dict):
    """input_blocks of the UNet/encoder: conv_in, then per level `nrb` ResBlocks (+ attention at
    attended resolutions) and a 2x downsampler between levels.

    `res` / `attn` are the shared ResBlock / AttentionBlock keyword arguments.
    Returns (input_blocks, channels of every block output, final channels, final resolution).
    """
    attended = {int(r) for r in attention_resolutions}
    ch = int(channel_mult[0] * model_channels)
    blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    chans, resolution = [ch], image_size
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            width = int(mult * model_channels)
            layers: list[nn.Module] = [ResBlock(ch, out_channels=width, **res)]
            ch = width
            if resolution in attended:
                layers.append(AttentionBlock(ch, **attn))
            blocks.append(TimestepSequential(*layers))
            chans.append(ch)
        if level != len(channel_mult) - 1:
            down = (ResBlock(ch, down=True, **res) if resblock_updown
                    else Downsample(ch, use_conv=conv_resample))
            blocks.append(TimestepSequential(down))
            chans.append(ch)
            resolution //= 2
    return blocks, chans, ch, resolution


def build_middle_block(ch: int, res: dict, attn: dict) -> TimestepSequential:
    """ResBlock - attention - ResBlock; the middle block always attends."""
    return TimestepSequential(ResBlock(ch, **res), AttentionBlock(ch, **attn), ResBlock(ch, **res))


def check_timesteps(t: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.shape != (n,):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise GdmError(f"timesteps t must be a tensor of shape ({n},) (one per image), got {shape}")
    return t


class UNet(nn.Module):
    """ADM UNet: eps (and variance-interpolation v when learn_sigma) from (x_t, t[, y])."""

    _input_factor = 1  # SuperResUNet concatenates the upsampled low-res image: 2

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        model_channels: int,
        channel_mult: Sequence[float],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        conv_resample: bool = True,
        rescale_residual: bool = False,
        dropout: float = 0.0,
        learn_sigma: bool = True,
        num_classes: int | None = None,
        attention_order: str = "legacy",
        use_checkpoint: bool = False,
        class_dropout: float = 0.0,
    ):
        super().__init__()
        channel_mult = tuple(channel_mult)
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        check_architecture(image_size, model_channels, channel_mult, attention_resolutions)
        if num_classes is not None and num_classes < 1:
            raise ConfigError(f"num_classes={num_classes}: expected None or a positive integer")
        if not 0.0 <= class_dropout < 1.0 or (class_dropout > 0 and num_classes is None):
            raise ConfigError(f"class_dropout={class_dropout}: expected a probability in [0, 1), and a "
                              "class-conditional UNet (num_classes set) when it is > 0")
        self.image_size, self.in_channels = image_size, in_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.model_channels, self.num_classes = model_channels, num_classes
        emb_dim = 4 * model_channels
        res = {"emb_channels": emb_dim, "dropout": dropout,
               "use_scale_shift_norm": use_scale_shift_norm,
               "rescale_residual": rescale_residual, "use_checkpoint": use_checkpoint}
        attn = {"num_heads": num_heads, "num_head_channels": num_head_channels,
                "attention_order": attention_order, "use_checkpoint": use_checkpoint}
        up_heads = num_heads if num_heads_upsample == -1 else num_heads_upsample
        attn_up = {**attn, "num_heads": up_heads}

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # Classifier-free guidance (Ho & Salimans 2022): with class_dropout > 0 the trainer replaces y by
        # the null label `num_classes` with that probability; its embedding is the learned extra row.
        self.class_dropout = float(class_dropout)
        self.null_label = num_classes if class_dropout > 0 else None
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + (self.null_label is not None), emb_dim)

        self.input_blocks, chans, ch, resolution = build_down_path(
            in_channels=in_channels * self._input_factor, image_size=image_size,
            model_channels=model_channels, channel_mult=channel_mult,
            num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
            resblock_updown=resblock_updown, conv_resample=conv_resample, res=res, attn=attn,
        )
        self.middle_block = build_middle_block(ch, res, attn)

        # Up path: nrb + 1 ResBlocks per level, each consuming one skip from the down path.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                width = int(mult * model_channels)
                layers: list[nn.Module] = [ResBlock(ch + chans.pop(), out_channels=width, **res)]
                ch = width
                if resolution in attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn_up))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, up=True, **res) if resblock_updown
                                  else Upsample(ch, use_conv=conv_resample))
                    resolution *= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(),
            zero_module(nn.Conv2d(ch, self.out_channels, 3, padding=1)),
        )

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Time embedding MLP(sinusoid(t)) (+ label embedding), float32 with autocast off."""
        n = t.shape[0]
        if self.num_classes is None:
            if y is not None:
                raise GdmError("this UNet is unconditional (num_classes=None) but labels y "
                               "were given")
        else:
            if y is None:
                raise GdmError(f"this UNet is class-conditional (num_classes={self.num_classes}): "
                               f"labels y of shape ({n},) are required")
            if y.shape != (n,) or y.dtype.is_floating_point or y.dtype == torch.bool:
                raise GdmError(f"labels y must be an integer tensor of shape ({n},), got "
                               f"{tuple(y.shape)} {y.dtype}")
            hi = self.label_emb.num_embeddings  # num_classes (+1: the null label of classifier-free guidance)
            # value check in eager only: under torch.compile it would split the graph (data-dependent)
            if n and not torch.compiler.is_compiling() and (int(y.min()) < 0 or int(y.max()) >= hi):
                null = f" (label {self.null_label} is the null label)" if self.null_label is not None else ""
                raise GdmError(f"labels y must lie in [0, {hi}){null}, got values in "
                               f"[{int(y.min())}, {int(y.max())}]")
        w = self.time_embed[0].weight
        with autocast_off(w.device.type):
            emb = self.time_embed(timestep_embedding(t, self.model_channels).to(w.dtype))
            if y is not None:
                emb = emb + self.label_emb(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x: [N, C_in, H, W]; t: [N] integer timesteps; y: [N] labels iff class-conditional.

        Returns [N, out_channels, H, W] in x's dtype (eps first, then v when learn_sigma).
        """
        expected = self.in_channels * self._input_factor
        if x.ndim != 4 or x.shape[1] != expected:
            raise GdmError(f"x must have shape [N, {expected}, H, W], got {tuple(x.shape)}")
        emb = self.embed(check_timesteps(t, x.shape[0]), y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        with autocast_off(x.device.type):
            return self.out(h.to(x.dtype))


class SuperResUNet(UNet):
    """ADM-U upsampler: the low-res image is bilinearly upsampled to x's size and concatenated
    to x on channels (so the first conv sees 2 * in_channels)."""

    _input_factor = 2

    def __init__(self, *, large_size: int, small_size: int, **kwargs):
        if small_size < 1 or small_size > large_size:
            raise ConfigError(f"small_size={small_size} must lie in [1, large_size={large_size}]")
        super().__init__(image_size=large_size, **kwargs)
        self.large_size, self.small_size = large_size, small_size

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, t: torch.Tensor, low_res: torch.Tensor,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise GdmError(f"x must have shape [N, {self.in_channels}, H, W], got "
                           f"{tuple(x.shape)}")
        if low_res.ndim != 4 or low_res.shape[:2] != x.shape[:2]:
            raise GdmError(f"low_res must have shape [{x.shape[0]}, {self.in_channels}, h, w], "
                           f"got {tuple(low_res.shape)}")
        up = F.interpolate(low_res.to(x.dtype), size=x.shape[-2:], mode="bilinear")
        return super().forward(torch.cat([x, up], dim=1), t, y)
