"""Pictures out: uint8 conversion, grids and PNG bytes (charts are SVG, in `plots`)."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

GRID_PADDING = 2


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> the [-1, 1] floats models read."""
    return images.float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model output in [-1, 1] -> uint8 pixels (the inverse of `from_uint8`)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def grid(images: torch.Tensor, per_row: int, padding: int = GRID_PADDING) -> np.ndarray:
    """uint8 N×C×H×W -> one H'×W'×C array with `per_row` images per row, black padding; one image
    is that image at its own size (`sample --seeds 5 --out one.png`), with no border."""
    n, c, h, w = images.shape
    if n == 1:
        return images[0].permute(1, 2, 0).cpu().numpy()
    per_row = max(1, min(per_row, n))
    rows = math.ceil(n / per_row)
    out = np.zeros((rows * (h + padding) + padding, per_row * (w + padding) + padding, c), np.uint8)
    pixels = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        top, left = padding + (i // per_row) * (h + padding), padding + (i % per_row) * (w + padding)
        out[top : top + h, left : left + w] = pixels[i]
    return out


def png_bytes(array: np.ndarray) -> bytes:
    """H×W×C (C = 1 or 3) uint8 -> PNG file contents."""
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_png(image: torch.Tensor) -> bytes:
    """One uint8 C×H×W image -> PNG bytes."""
    return png_bytes(image.permute(1, 2, 0).cpu().numpy())


def gif_bytes(images: torch.Tensor, frame_ms: int) -> bytes:
    """uint8 N×C×H×W -> an animated GIF, one frame per image, looping forever. Gray frames keep
    their 256 levels; colour frames get a palette each (GIF's limit), adaptive, not dithered."""
    frames = [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in images.permute(0, 2, 3, 1).cpu().numpy()]
    if frames[0].mode == "RGB":
        frames = [f.quantize(256, dither=Image.Dither.NONE) for f in frames]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return buffer.getvalue()

