"""Where and how the maths runs: device choice, seeding, mixed precision."""

from __future__ import annotations

import random
import re
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from genai_cli.errors import UsageError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("bf16", "fp32")  # bf16: mixed precision (matmuls and convolutions in bfloat16); fp32: float32 throughout


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


def resolve_precision(requested: str | None, device: torch.device) -> str:
    """--precision, or where none is given bf16 wherever the device computes it natively: CUDA, and CPUs
    with AVX512-BF16 or AMX (1.2-1.5x the images/s of float32 on 2 such cores, every family: benchmarks/RESULTS.md);
    float32 elsewhere, where bfloat16 is emulated and slower (and on MPS)."""
    if requested is None:
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and _native_cpu_bf16()) else "fp32"
    if requested not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "bf16" and device.type not in ("cuda", "cpu"):
        raise UsageError(f"--precision bf16 runs on CUDA and CPUs, not {device.type}; use --precision fp32 there")
    return requested


def _native_cpu_bf16() -> bool:
    """AVX512-BF16 or AMX under oneDNN, which runs bf16 convolutions on them; torch's probes are private,
    so a build without them reads as no."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return torch.backends.mkldnn.is_available() and any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def autocast(device: torch.device, precision: str | None) -> AbstractContextManager:
    """Mixed bf16 under --precision bf16 (bfloat16 keeps float32's range, so no loss scaling; the
    losses take logits in float32, so this is safe); nothing under fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
