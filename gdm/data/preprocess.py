"""Image preprocessing as ADM does it, and PNG encoding.

ADM's resize (guided-diffusion `center_crop_arr`): while the short side is at least twice the
target, halve the image with a BOX filter; then resize with BICUBIC so the short side equals the
target; then center-crop the long side.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from gdm.errors import DataError


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Grayscale/RGBA/palette/CMYK/16-bit images -> RGB (ADM), then -> L when 1 channel is asked."""
    if image.mode != "RGB":
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(image, dtype=np.float64)
            hi = 65535.0 if arr.max() > 255 else 255.0
            image = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8), "L")
        image = image.convert("RGB")
    return image.convert("L") if channels == 1 else image


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """ADM: repeated BOX halving while min side >= 2*size, BICUBIC to size, center crop."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes, where: str = "PNG data") -> np.ndarray:
    """PNG bytes -> uint8 array [H, W, C] (C = 1 or 3); corrupt bytes -> `DataError` naming `where`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: corrupt image ({exc}); rerun `gdm prepare`") from None
    return arr[..., None] if arr.ndim == 2 else arr
