"""Pictures people would rather look at than read: image grids and metric plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
    plt = _pyplot()
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
    out = _save(fig, path)
    plt.close(fig)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def save_tradeoff_plot(rows: list[dict], path: str | Path) -> Path:
    """Guidance trade-off across scales: FID vs IS, precision vs recall and accuracy vs scale, one line per
    variant/sampler/guidance kind (classifier guidance solid, classifier-free dashed), on the same axes."""
    plt = _pyplot()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4), dpi=100)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        kind = r.get("guidance", "classifier")
        groups.setdefault(f"{r['variant']} {r['sampler']} {kind}", []).append(r)
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["scale"])
        style = "--" if name.endswith(" free") else "-"
        accs = [(r["scale"], r["accuracy"]) for r in rs if r.get("accuracy") is not None]
        if accs:
            a3.plot([p[0] for p in accs], [p[1] for p in accs], style, marker="o", label=name)
        for ax, xk, yk in ((a1, "is", "fid"), (a2, "recall", "precision")):
            pts = [(r[xk], r[yk], r["scale"]) for r in rs if r.get(xk) is not None and r.get(yk) is not None]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=name)
            for x, y, s in pts:
                ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    a1.set_xlabel("Inception Score (evaluator logits)")
    a1.set_ylabel("FID")
    a1.set_title("FID vs IS across guidance scales")
    a2.set_xlabel("recall")
    a2.set_ylabel("precision")
    a2.set_title("precision vs recall across guidance scales")
    a3.set_xlabel("guidance scale (classifier: s, classifier-free: w)")
    a3.set_ylabel("accuracy on requested labels")
    a3.set_title("accuracy vs guidance scale")
    for ax in (a1, a2, a3):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def save_ablation_plot(rows: list[dict], path: str | Path, baseline: str) -> Path:
    """Delta FID vs the baseline per architecture variant, against training throughput."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    names = [r["variant"] for r in rows]
    deltas = [r["delta_fid"] or 0.0 for r in rows]
    a1.barh(names, deltas, color=["tab:green" if d < 0 else "tab:red" for d in deltas])
    a1.axvline(0, color="black", lw=0.8)
    a1.set_xlabel(f"FID - FID({baseline})  (lower is better)")
    a1.set_title("architecture ablations")
    for r in rows:
        if r.get("train_images_per_s") and r.get("fid") is not None:
            a2.scatter(r["train_images_per_s"], r["fid"])
            a2.annotate(r["variant"], (r["train_images_per_s"], r["fid"]), fontsize=7)
    a2.set_xlabel("training images/s")
    a2.set_ylabel("FID")
    a2.set_title("quality vs wall-clock")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
