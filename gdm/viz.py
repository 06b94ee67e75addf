"""Pictures people would rather look at than read: image grids and metric plots."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from gdm.io import atomic_path


def grid_array(images: np.ndarray, nrow: int, pad: int = 1, scale: int = 1) -> np.ndarray:
    """uint8 NHWC -> one uint8 HWC mosaic with `nrow` images per row."""
    n, h, w, c = images.shape
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    rows = (n + nrow - 1) // nrow
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    return out


def _auto_scale(h: int) -> int:
    return max(1, 32 // h)


def save_grid(images: np.ndarray, path: str | Path, nrow: int = 8, row_labels: Sequence[str] | None = None,
              title: str | None = None) -> Path:
    """Save a PNG grid; small images are upscaled (nearest) so 8x8 digits stay visible."""
    scale = _auto_scale(images.shape[1])
    arr = grid_array(images, nrow, pad=2, scale=scale)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB")
    left = 40 if row_labels else 0
    top = 16 if title else 0
    canvas = Image.new("RGB", (img.width + left, img.height + top), "white")
    canvas.paste(img, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black")
    if row_labels:
        cell = images.shape[1] * scale + 2
        for r, text in enumerate(row_labels):
            draw.text((4, top + 2 + r * cell + cell // 2 - 6), str(text)[:6], fill="black")
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def save_line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, xlabel: str,
                   ylabel: str, title: str = "", logy: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
