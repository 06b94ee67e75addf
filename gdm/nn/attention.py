"""Multi-head self-attention of ADM (ADM.md sec. 1) and the CLIP-style attention pool (sec. 2).

Attention is computed with `F.scaled_dot_product_attention` in float32 (float64 stays float64):
half-precision q, k, v (also under autocast) are cast to float32 before the call, autocast is off
inside it, and the result is cast back to the input dtype,
so the softmax statistics are float32 as in the reference, which evaluates
`softmax((q * ch**-0.25) . (k * ch**-0.25))` in float32.

q, k and v reach SDPA contiguous, head channels last (stride 1), on every device but a CPU with
fewer than CPU_CONTIGUOUS_MIN_LENGTH positions. Every fused SDPA kernel (flash, memory-efficient
and cuDNN on CUDA, flash on CPU) requires that; with the [N, H, ch, L] -> [N, H, L, ch] transposed
views, SDPA falls back to its math path, which materialises the L x L weights of every head
(ADM-256's 32x32 attention: L = 1024). One copy of qkv buys it. On two CPU cores
(`benchmarks/bench_attention.py`; whole-UNet A/B runs with steps interleaved): attention at
L = 1024 runs ~4x faster without gradients and 2.3-2.4x with them (eager or compiled); at L = 256
1.2-2.5x without gradients and 1.0-1.3x with them (the 32x32 UNet's eager forward: 1.05x; its
compiled training step: 0.97-0.99x, within noise); at L <= 64 the copy does not pay (0.88-1.06x,
the digits UNet 2-4 % slower), hence the CPU threshold. Both layouts compute the same formula and
differ by float32 rounding (~1e-6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gdm.errors import ConfigError
from gdm.nn.layers import GroupNorm32, autocast_off, zero_module

ATTENTION_ORDERS = ("legacy", "new")
CPU_CONTIGUOUS_MIN_LENGTH = 256  # below this many positions a CPU keeps the views (module docstring)


def split_qkv(qkv: torch.Tensor, num_heads: int, order: str, contiguous: bool | None = None):
    """Split a [N, 3*H*ch, L] qkv tensor into q, k, v of shape [N, H, L, ch].

    "legacy": channels are grouped per head, [q_h, k_h, v_h] for h = 1..H.
    "new":    channels are grouped per role, [Q_all, K_all, V_all], each head-major.
    `contiguous` (default: all but CPU inputs with L < CPU_CONTIGUOUS_MIN_LENGTH) copies qkv once
    into [3, N, H, L, ch], so that each of q, k, v is contiguous, as fused SDPA kernels need (see
    the module docstring); otherwise they are transposed views (stride(-1) = L).
    """
    n, width, length = qkv.shape
    ch = width // (3 * num_heads)
    if order == "legacy":
        roles = qkv.reshape(n, num_heads, 3, ch, length).permute(2, 0, 1, 4, 3)
    elif order == "new":
        roles = qkv.reshape(n, 3, num_heads, ch, length).permute(1, 0, 2, 4, 3)
    else:
        raise ConfigError(f"attention_order={order!r}: expected one of {ATTENTION_ORDERS}")
    if contiguous is None:
        contiguous = qkv.device.type != "cpu" or length >= CPU_CONTIGUOUS_MIN_LENGTH
    q, k, v = (roles.contiguous() if contiguous else roles).unbind(0)
    return q, k, v


def qkv_attention(qkv: torch.Tensor, num_heads: int, order: str = "legacy") -> torch.Tensor:
    """softmax(q k^T / sqrt(ch)) v per head, [N, 3*H*ch, L] -> [N, H*ch, L] (head-major channels).

    q and k are each scaled by ch**-0.25 (the reference's fp16-safe form) and SDPA runs with
    scale 1 in float32, with autocast off.
    """
    n, width, length = qkv.shape
    if width % (3 * num_heads):
        raise ConfigError(f"qkv width {width} is not divisible by 3 * num_heads = {3 * num_heads}")
    ch = width // (3 * num_heads)
    work = qkv if qkv.dtype in (torch.float32, torch.float64) else qkv.float()
    q, k, v = split_qkv(work, num_heads, order)
    s = ch**-0.25
    with autocast_off(qkv.device.type):
        a = F.scaled_dot_product_attention(q * s, k * s, v, scale=1.0)  # [N, H, L, ch]
    return a.transpose(-1, -2).reshape(n, num_heads * ch, length).to(qkv.dtype)


def resolve_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Heads = channels // num_head_channels when that is set (!= -1), else num_heads."""
    if num_head_channels == -1:
        if num_heads < 1 or channels % num_heads:
            raise ConfigError(f"num_heads={num_heads} must be >= 1 and divide channels={channels}")
        return num_heads
    if num_head_channels < 1 or channels % num_head_channels:
        raise ConfigError(
            f"num_head_channels={num_head_channels} must be >= 1 and divide channels={channels}"
        )
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """x + proj_out(attention(qkv(GN(x)))) over the H*W positions; proj_out is zero-initialised."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        attention_order: str = "legacy",
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if attention_order not in ATTENTION_ORDERS:
            raise ConfigError(
                f"attention_order={attention_order!r}: expected one of {ATTENTION_ORDERS}"
            )
        self.channels = channels
        self.num_heads = resolve_heads(channels, num_heads, num_head_channels)
        self.attention_order = attention_order
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = x.shape
        x = x.reshape(n, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.attention_order)
        h = self.proj_out(h)
        return (x + h).reshape(n, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: a mean token attends over [mean; positions] (ADM.md sec. 2).

    Names follow the released classifiers: `positional_embedding` [C, HW+1], `qkv_proj`, `c_proj`.
    The qkv split uses the "new" order ([Q_all, K_all, V_all]) as in the reference.
    """

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int,
                 output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5
        )
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim or embed_dim, 1)
        self.num_heads = resolve_heads(embed_dim, 1, num_head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *_ = x.shape
        x = x.reshape(n, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        h = qkv_attention(self.qkv_proj(x), self.num_heads, "new")
        return self.c_proj(h)[:, :, 0]
