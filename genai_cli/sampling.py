"""Turning a trained model into images, reproducibly.

Image i's latent comes from its own seed, drawn on the CPU with a seeded torch.Generator
and then moved to the device, so a seed names the same image on every run and device
(up to the device's arithmetic) and `--seeds 0-63` equals `--n 64 --seed 0`.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genai_cli import checkpoint as ckpt
from genai_cli import images as imgs
from genai_cli.console import emit_bytes
from genai_cli.errors import UsageError
from genai_cli.fileio import atomic_write, file_sha256
from genai_cli.models import GenerativeModel, VariationalModel
from genai_cli.runtime import pick_device

SAMPLE_BATCH = 256
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def parse_seeds(text: str) -> list[int]:
    """'0-99', '3,5,8', '7' or a mix such as '0-3,10' -> list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UsageError(f"--seeds {text!r} is not a seed list; write e.g. 0-99 or 1,5,9")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise UsageError(f"--seeds range {first}-{last} runs backwards; write {last}-{first}")
        seeds.extend(range(first, last + 1))
    return seeds


def latents(seeds: list[int], latent_dim: int) -> torch.Tensor:
    """One N(0, I) latent per seed, on the CPU."""
    out = torch.empty(len(seeds), latent_dim)
    for i, seed in enumerate(seeds):
        out[i] = torch.randn(latent_dim, generator=torch.Generator().manual_seed(seed))
    return out


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """Spherical interpolation: stays on the shell where Gaussian latents live."""
    t = torch.linspace(0, 1, steps).unsqueeze(1)
    cos = (a @ b / (a.norm() * b.norm())).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4:
        out = (1 - t) * a + t * b
    else:
        out = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    out[0], out[-1] = a, b  # exact endpoints: the walk starts and ends on the seeds' own images
    return out


def class_rows(n: int, num_classes: int) -> tuple[torch.Tensor, int]:
    """Labels for a per-class grid (row k is class k) and the images per row."""
    per_row = math.ceil(n / num_classes)
    return torch.arange(n) // per_row, per_row


@torch.no_grad()
def generate(
    model: GenerativeModel, z: torch.Tensor, labels: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """uint8 N×C×H×W images on the CPU, generated in batches in eval mode."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, z.shape[0], SAMPLE_BATCH):
            zb = z[start : start + SAMPLE_BATCH].to(device)
            lb = labels[start : start + SAMPLE_BATCH].to(device) if labels is not None else None
            out.append(imgs.to_uint8(model.generate(zb, lb)).cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


@torch.no_grad()
def reconstruct(model: VariationalModel, images: torch.Tensor, labels: torch.Tensor | None,
                device: torch.device) -> torch.Tensor:
    """uint8 reconstructions (decoder mean at the posterior mean) of uint8 images."""
    was_training = model.training
    model.eval()
    try:
        real = images.to(device).float() / 127.5 - 1
        lb = labels.to(device) if labels is not None else None
        mu, _ = model.encoder(real, lb)
        return imgs.to_uint8(model.decoder(mu, lb)).cpu()
    finally:
        model.train(was_training)


@dataclass
class SamplePlan:
    """What to generate: one latent per image, its seed, its label, and the grid layout."""

    z: torch.Tensor
    seeds: list[int]
    labels: torch.Tensor | None
    per_row: int


@dataclass
class SampleBatch:
    images: torch.Tensor  # uint8 N×C×H×W
    seeds: list[int]
    labels: torch.Tensor | None
    per_row: int


def write_grid(batch: SampleBatch, out: Path) -> list[str]:
    atomic_write(out, imgs.png_bytes(imgs.grid(batch.images, batch.per_row)))
    return [str(out)]


def write_npz(batch: SampleBatch, out: Path) -> list[str]:
    buffer = io.BytesIO()
    labels = batch.labels.numpy() if batch.labels is not None else np.full(len(batch.seeds), -1)
    np.savez_compressed(
        buffer, images=batch.images.permute(0, 2, 3, 1).numpy(), labels=labels, seeds=np.asarray(batch.seeds)
    )
    atomic_write(out, buffer.getvalue())
    return [str(out)]


def write_folder(batch: SampleBatch, out: Path, checkpoint: Path, classes: list[str]) -> list[str]:
    """One PNG per image plus manifest.jsonl (file, seed, label, checkpoint sha256)."""
    sha = file_sha256(checkpoint)
    files, manifest = [], []
    for i, seed in enumerate(batch.seeds):
        label = int(batch.labels[i]) if batch.labels is not None else None
        name = f"seed{seed:06d}.png" if label is None else f"seed{seed:06d}-class{label}.png"
        atomic_write(out / name, imgs.image_png(batch.images[i]))
        files.append(str(out / name))
        entry = {"file": name, "seed": seed, "label": label, "checkpoint_sha256": sha}
        if label is not None and label < len(classes):
            entry["class"] = classes[label]
        manifest.append(json.dumps(entry))
    atomic_write(out / "manifest.jsonl", ("\n".join(manifest) + "\n").encode())
    return files + [str(out / "manifest.jsonl")]


# ---------------------------------------------------------------- the `sample` command


@dataclass
class SampleRequest:
    out: str
    checkpoint: str | None = None
    n: int | None = None
    seeds: str | None = None
    seed: int = 0
    label: str | None = None
    per_row: int | None = None
    interpolate: tuple[int, int] | None = None
    steps: int = 10
    device: str = "auto"
    force: bool = False


def parse_label(text: str, classes: list[str], num_classes: int) -> int:
    """A class index or a class name (case-insensitive), checked against the model."""
    names = [c.lower() for c in classes]
    if text.strip().lower() in names:
        return names.index(text.strip().lower())
    if text.strip().lstrip("-").isdigit() and 0 <= int(text) < num_classes:
        return int(text)
    shown = ", ".join(f"{i}={c}" for i, c in enumerate(classes)) or f"0..{num_classes - 1}"
    raise UsageError(f"--label {text!r} is not a class of this model; choose one of: {shown}")


def output_kind(out: str) -> str:
    if out == "-":
        return "stdout"
    suffix = Path(out).suffix.lower()
    return {".png": "grid", ".npz": "npz"}.get(suffix, "folder" if not suffix else "unknown")


def check_output(out: str, kind: str, force: bool) -> None:
    path = Path(out)
    if kind == "unknown":
        raise UsageError(f"--out {out!r}: use a .png grid, a .npz array, a folder, or - for PNG bytes on stdout")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose a folder name or a .png/.npz file")
    exists = path.is_dir() and any(path.iterdir()) if kind == "folder" else kind != "stdout" and path.exists()
    if exists and not force:
        raise UsageError(f"{out} already exists; pass --force to overwrite it or choose another --out")


def plan_batch(req: SampleRequest, model: GenerativeModel, classes: list[str]) -> SamplePlan:
    """Latents, labels and grid layout for the request (seeds, labels, interpolation)."""
    cfg = model.config
    if req.label is not None and not model.conditional:
        raise UsageError(f"--label needs a conditional model (cgan, cvae); this checkpoint is a {cfg.kind}")
    label = parse_label(req.label, classes, cfg.num_classes) if req.label is not None else None
    if req.interpolate is not None:
        if req.steps < 2:
            raise UsageError(f"--steps must be at least 2 for --interpolate, got {req.steps}")
        if model.conditional and label is None:
            raise UsageError("--interpolate on a conditional model needs --label: the class to walk in")
        _check_seed_range(list(req.interpolate))
        a, b = req.interpolate
        z_ab = latents([a, b], model.latent_dim)
        seeds = [a] * req.steps
        z = slerp(z_ab[0], z_ab[1], req.steps)
    else:
        seeds = parse_seeds(req.seeds) if req.seeds else list(range(req.seed, req.seed + (req.n or 64)))
        if req.n is not None and req.seeds and req.n != len(seeds):
            raise UsageError(f"--n {req.n} disagrees with --seeds ({len(seeds)} seeds); give one of them")
        _check_seed_range(seeds)
        z = latents(seeds, model.latent_dim)
    n = len(seeds)
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {req.n}")
    per_row = req.per_row or (n if req.interpolate else max(1, math.ceil(math.sqrt(n))))
    labels = None
    if model.conditional:
        if label is not None:
            labels = torch.full((n,), label, dtype=torch.long)
        else:
            labels, rows = class_rows(n, cfg.num_classes)
            per_row = req.per_row or rows
    return SamplePlan(z, seeds, labels, per_row)


def _check_seed_range(seeds: list[int]) -> None:
    low, high = SEED_RANGE
    bad = [s for s in (min(seeds, default=0), max(seeds, default=0)) if not low <= s <= high]
    if bad:
        raise UsageError(f"seed {bad[0]} is out of range; seeds go from {low} to {high}")


def run_sample(req: SampleRequest) -> dict:
    """Generate and write samples; returns the JSON summary of what was written."""
    kind = output_kind(req.out)
    check_output(req.out, kind, req.force)
    if req.n is not None and req.n < 1:
        raise UsageError(f"--n must be at least 1, got {req.n}")
    if req.per_row is not None and req.per_row < 1:
        raise UsageError(f"--nrow must be at least 1, got {req.per_row}")
    device = pick_device(req.device)
    model, loaded = ckpt.load_model(req.checkpoint, device)
    classes = loaded.config.data.classes
    plan = plan_batch(req, model, classes)
    if req.interpolate is not None and kind == "folder":
        raise UsageError("--interpolate writes a grid: use --out NAME.png, NAME.npz or -")
    batch = SampleBatch(generate(model, plan.z, plan.labels, device), plan.seeds, plan.labels, plan.per_row)
    out = Path(req.out)
    if kind == "stdout":
        emit_bytes(imgs.png_bytes(imgs.grid(batch.images, batch.per_row)))
        files = ["-"]
    elif kind == "grid":
        files = write_grid(batch, out)
    elif kind == "npz":
        files = write_npz(batch, out)
    else:
        files = write_folder(batch, out, loaded.path, classes)
    return {
        "checkpoint": str(loaded.path),
        "kind": loaded.config.model.kind,
        "n": len(batch.seeds),
        "files": files,
        "device": str(device),
    }
