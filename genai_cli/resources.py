"""How much memory a request needs, checked against the machine before the work starts.

A request that cannot fit (a grid of 10^9 images, a model at a size no memory holds) is refused
up front with the estimate and the limit in one line, instead of growing until the system kills
the process or ending in an allocator's `tried to allocate ...` error.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from genai_cli.config import ModelConfig
from genai_cli.errors import UsageError
from genai_cli.models import GenerativeModel, ModelSpec, VariationalModel

USABLE_FRACTION = 0.8  # of the memory available now: the rest is the OS's and other programs'
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def available_bytes() -> int | None:
    """Memory this process may still use: MemAvailable, capped by a container's cgroup limit (None: unknown)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    for limit in CGROUP_LIMITS:
        try:
            found.append(int(limit.read_text().strip()))
        except (OSError, ValueError):  # absent, or "max": no limit
            continue
    return min(found) if found else None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def require_memory(estimate: float, what: str, fix: str, limit: float | None = None) -> None:
    """A UsageError when `estimate` bytes exceed `limit` (default: USABLE_FRACTION of the available memory)."""
    if limit is None:
        available = available_bytes()
        if available is None:
            return
        limit = available * USABLE_FRACTION
    if estimate > limit:
        raise UsageError(f"{what} need about {gib(estimate)} of memory, above the {gib(limit)} usable here; {fix}")


def device_limit(device: torch.device) -> float | None:
    """Usable bytes on a CUDA device (free memory now); None: the device shares the machine's memory."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free * USABLE_FRACTION


def training_step_bytes(model: GenerativeModel, batch: int) -> int:
    """What one training step holds, from the model's shapes on the meta device (nothing allocated):
    float32 weights with their gradients, Adam's two moments and the moving average (5 copies), and
    every layer's output for the batch, kept for backward and matched by its gradient (2 copies),
    with the discriminator run three times (real and fake for D, fake again for G)."""
    weights = sum(p.numel() for p in model.parameters()) * 4 * 5
    outputs = [0]

    def count(module: nn.Module, inputs: object, output: object) -> None:
        tensors = output if isinstance(output, tuple) else (output,)
        outputs[0] += sum(t.numel() * 4 for t in tensors if isinstance(t, torch.Tensor))

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    m = model.config
    labels = torch.zeros(batch, dtype=torch.long, device="meta") if model.conditional else None
    images = torch.zeros(batch, m.channels, m.image_size, m.image_size, device="meta")
    if model.translates:  # G reads an input image, which D sees beside its output
        labels = torch.zeros(batch, m.in_channels or m.channels, m.image_size, m.image_size, device="meta")
    try:
        with torch.no_grad():
            if not isinstance(model, VariationalModel):  # a generator and a discriminator
                model.generator(labels if model.translates else torch.zeros(batch, model.latent_dim, device="meta"), labels)
                generator_outputs = outputs[0]
                model.discriminator(images, labels)
                outputs[0] = generator_outputs + 3 * (outputs[0] - generator_outputs)
            else:
                model.encoder(images, labels)
                model.decoder.draw(torch.zeros(batch, model.latent_dim, device="meta"), labels)  # training's path, not --best-of's
    finally:
        for hook in hooks:
            hook.remove()
    return weights + 2 * outputs[0]


def require_training_fits(spec: ModelSpec, model: ModelConfig, batch: int, device: torch.device) -> None:
    """Refuse, before any allocation, a model and batch whose training step cannot fit on `device`."""
    with torch.device("meta"):
        shapes = spec.build(model)
    require_memory(training_step_bytes(shapes, batch),
                   f"training steps of {batch} images of {model.image_size}x{model.image_size} at --width {model.width}",
                   "use a smaller --batch-size, --width or --image-size", device_limit(device))
