"""Writing IDX files (torchvision's MNIST layout): how tests and benchmarks make tiny datasets.

The inverse of `genai_cli.data`'s reader; the product only reads IDX, so the writer lives here.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Unsigned bytes with the IDX header; gzip when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path
