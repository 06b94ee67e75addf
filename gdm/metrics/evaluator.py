"""A small clean classifier ("evaluator") whose features score FID / precision / recall offline.

It is NOT the noisy guidance classifier: it sees clean images only. Architecture: conv3x3-GN-SiLU
blocks, stride-2 downsampling until the map is <= 4 x 4, global average pool, a penultimate
Linear to `feature_dim`, SiLU, and the logits Linear.

Features (`forward_features`):
  pool    = penultimate Linear output BEFORE its activation (N x feature_dim). DIGITS.md: post-ReLU
            features let uniform noise score well, so we take pre-activation features.
  spatial = first `spatial_channels` channels of the first feature map at <= 8 x 8 (pre-activation,
            GN output), flattened H, W, C (an sFID analogue; 8 x 8 x 4 = 256 dims).
  logits  = class logits (N x num_classes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gdm.errors import CheckpointError, GdmError
from gdm.io import load_checkpoint, save_checkpoint
from gdm.rng import seeded

if TYPE_CHECKING:
    from gdm.data.reader import RowReader, TensorRows

    Rows = RowReader | TensorRows


class EvaluatorNet(nn.Module):
    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        feature_dim: int = 64,
        spatial_channels: int = 4,
        seed: int = 0,
    ):
        super().__init__()
        if not 8 <= image_size <= 64:
            raise GdmError(f"EvaluatorNet: image_size must be in [8, 64], got {image_size}")
        if width % 8 or spatial_channels > width:
            raise GdmError(
                f"EvaluatorNet: width must be a multiple of 8 and >= spatial_channels, "
                f"got width={width}, spatial_channels={spatial_channels}"
            )
        self.config = {
            "image_size": image_size,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "width": width,
            "feature_dim": feature_dim,
            "spatial_channels": spatial_channels,
        }
        with seeded(seed):  # explicit, reproducible initialisation (no other thread draws meanwhile)
            self._build(image_size, in_channels, num_classes, width, feature_dim)

    def _build(self, image_size, in_channels, num_classes, width, feature_dim):
        # (conv, norm) pairs: two blocks at full resolution, then [stride-2 block, block] per level.
        convs, chans, res = [], [width], image_size
        convs += [
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.Conv2d(width, width, 3, padding=1),
        ]
        chans.append(width)
        self.spatial_index = 1 if res <= 8 else None
        ch = width
        while res > 4:
            out = min(2 * ch, 4 * width)
            convs += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.Conv2d(out, out, 3, padding=1)]
            chans += [out, out]
            res, ch = math.ceil(res / 2), out
            if self.spatial_index is None and res <= 8:
                self.spatial_index = len(convs) - 1
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(nn.GroupNorm(8, c) for c in chans)
        self.penultimate = nn.Linear(ch, feature_dim)
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, spatial = x, None
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            pre = norm(conv(h))
            if i == self.spatial_index:
                k = self.config["spatial_channels"]
                spatial = pre[:, :k].permute(0, 2, 3, 1).flatten(1)
            h = F.silu(pre)
        pool = self.penultimate(h.mean(dim=(2, 3)))  # pre-activation penultimate features
        logits = self.classifier(F.silu(pool))
        return {"pool": pool, "spatial": spatial, "logits": logits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["logits"]


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in x and y (edge-replicated border)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None]  # N,1,H,1
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :]  # N,1,1,W
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


@torch.no_grad()
def extract_features(
    net: EvaluatorNet, images: torch.Tensor, batch_size: int = 512
) -> dict[str, np.ndarray]:
    """pool / spatial / logits of float images in [-1, 1] (N x C x H x W) as float64 arrays."""
    was_training = net.training
    net.eval()
    parts: dict[str, list[np.ndarray]] = {"pool": [], "spatial": [], "logits": []}
    for start in range(0, images.shape[0], batch_size):
        out = net.forward_features(images[start : start + batch_size].float())
        for key, chunks in parts.items():
            chunks.append(out[key].double().numpy())
    net.train(was_training)
    return {k: np.concatenate(v) for k, v in parts.items()}


def uint8_to_float(images_nhwc: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C (ADM .npz layout) -> float N x C x H x W in [-1, 1]."""
    return (
        torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2).float() / 127.5 - 1
    )


def train_evaluator(
    net: EvaluatorNet,
    train: Rows,
    val: Rows,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    weight_decay: float = 1e-4,
    max_shift: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, float]:
    """AdamW + cross-entropy with random translations, cosine lr decay; returns metrics.

    `train` and `val` are row sources (`gdm.data.reader.RowReader` over a prepared split, or
    `TensorRows` over tensors): each step takes a uniformly drawn batch of training rows.
    """
    shift = max_shift if max_shift is not None else max(1, net.config["image_size"] // 8)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    net.train()
    losses = []
    n = len(train)
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
        images, labels = train.take(idx)
        x = random_translate(images.float(), shift, generator)
        loss = F.cross_entropy(net(x), labels.long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    chunks = [(extract_features(net, x)["logits"], y) for x, y in val.chunks(512)]
    logits = torch.from_numpy(np.concatenate([c[0] for c in chunks]))
    val_labels = torch.cat([c[1] for c in chunks])
    val_loss = F.cross_entropy(logits, val_labels.long()).item()
    val_acc = (logits.argmax(1) == val_labels.long()).double().mean().item()
    net.eval()
    return {
        "val_accuracy": val_acc,
        "val_loss": val_loss,
        "steps": float(steps),
        "train_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
    }


def save_evaluator(path: str | os.PathLike, net: EvaluatorNet, metrics: dict | None = None) -> None:
    save_checkpoint(
        path,
        {
            "kind": "gdm-evaluator",
            "config": dict(net.config),
            "state_dict": net.state_dict(),
            "metrics": dict(metrics or {}),
        },
    )


def load_evaluator(path: str | os.PathLike) -> tuple[EvaluatorNet, dict]:
    payload = load_checkpoint(path)
    if payload.get("kind") != "gdm-evaluator" or "config" not in payload:
        raise CheckpointError(
            f"{path}: not a gdm evaluator checkpoint (kind={payload.get('kind')!r})"
        )
    net = EvaluatorNet(**payload["config"])
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: state dict does not match its config: {exc}") from None
    net.eval()
    return net, payload.get("metrics", {})
