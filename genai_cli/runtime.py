"""Where and how the maths runs: device choice, seeding, mixed precision."""

from __future__ import annotations

import random
import re
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from genai_cli.errors import UsageError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; an explicit request must be satisfiable."""
    name = requested.strip().lower()
    match = re.fullmatch(r"([a-z]+)(?::(\d{1,4}))?", name)
    kind = match[1] if match else name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise UsageError(f"unknown --device {requested!r}; choose one of: {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if not match or match[2] is not None and kind != "cuda":
        raise UsageError(f"--device {requested!r} is not a device; write {kind}" + (" or cuda:N (N a number)" if kind == "cuda" else ""))
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    if kind == "mps" and not _mps_available():
        raise UsageError("--device mps was asked for but Apple MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def seed_everything(seed: int) -> None:
    """Seed every RNG training touches (torch on all devices, numpy, python)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA only; CPU and MPS train in float32 (losses take logits, so this is safe)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
