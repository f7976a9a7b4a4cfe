"""Pictures out: uint8 conversion, grids, PNG bytes and the training loss curve.

The loss curve is drawn with PIL alone: a plot of a few lines does not justify matplotlib.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

GRID_PADDING = 2


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model output in [-1, 1] -> uint8 pixels (the inverse of training's x / 127.5 - 1)."""
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


CURVE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def loss_curve_png(rows: list[dict[str, float]], keys: list[str], size: tuple[int, int] = (800, 400)) -> bytes:
    """Line plot of `keys` against `step` with axis labels and a legend."""
    width, height = size
    left, right, top, bottom = 60, 20, 20, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    steps = [r["step"] for r in rows]
    values = [r[k] for r in rows for k in keys if k in r and math.isfinite(r[k])]
    if not steps or not values:
        return png_bytes(np.asarray(image))
    x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    y0, y1 = min(values), max(values) if max(values) > min(values) else min(values) + 1

    def point(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x0) / (x1 - x0) * (width - left - right)
        y = height - bottom - (value - y0) / (y1 - y0) * (height - top - bottom)
        return x, y

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        value = y0 + frac * (y1 - y0)
        _, y = point(x0, value)
        draw.text((4, y - 6), f"{value:.3g}", fill="black")
        step = x0 + frac * (x1 - x0)
        x, _ = point(step, y0)
        draw.text((x - 12, height - bottom + 6), f"{step:.0f}", fill="black")
    draw.text((width // 2 - 12, height - 16), "step", fill="black")
    for i, key in enumerate(keys):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        line = [point(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        draw.rectangle([left + 10, top + 8 + 16 * i, left + 22, top + 18 + 16 * i], fill=colour)
        draw.text((left + 28, top + 6 + 16 * i), key, fill="black")
    return png_bytes(np.asarray(image))
