"""Turning a trained model into images, reproducibly.

Image i's latent comes from its own seed, drawn on the CPU with a seeded torch.Generator
and then moved to the device, so a seed names the same image on every run and device
(up to the device's arithmetic) and `--seeds 0-63` equals `--n 64 --seed 0`.

`--trunc PSI` is the truncation trick (Brock et al. 2018; stylegan2-ada's `generate.py --trunc`)
in its simplest form: genai's latents are N(0, I), whose mean is 0, so pulling a latent toward
the mean is z * PSI. It scales the noise that goes in, so a VAE's fitted prior pulls toward the
mean of the component the noise picks (scaling keeps the noise's angle, which picks it).
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import torch
from PIL import Image, ImageOps

from genai_cli import checkpoint as ckpt
from genai_cli import data, pairs
from genai_cli import images as imgs
from genai_cli.config import Config, check_range
from genai_cli.console import emit_bytes
from genai_cli.errors import UsageError
from genai_cli.fileio import atomic_write, atomic_writer, file_sha256
from genai_cli.models import GenerativeModel
from genai_cli.resources import require_memory
from genai_cli.runtime import pick_device

SAMPLE_BATCH = 256  # images generated (and, for a folder, written) at a time
SAMPLE_GRID_PAIRS = 64  # pairs of a dataset split that `sample --input NAME:SPLIT` translates unless --n says
GIF_FRAME_MS = 100  # an --interpolate walk of 10 frames plays in a second


class Seeds(Sequence[int]):
    """Seeds kept as ranges: `--seeds 0-99999999` costs two numbers, and a chunk of it is a short list."""

    def __init__(self, ranges: list[range]) -> None:
        self.ranges = [r for r in ranges if len(r)]
        self._ends = list(itertools.accumulate(len(r) for r in self.ranges))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = bisect.bisect_right(self._ends, index)
        return self.ranges[k][index - (self._ends[k - 1] if k else 0)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (list, Seeds)) and list(self) == list(other)

    def extremes(self) -> tuple[int, int]:
        return min(r[0] for r in self.ranges), max(r[-1] for r in self.ranges)


def parse_seeds(text: str) -> Seeds:
    """'0-99', '3,5,8', '7' or a mix such as '0-3,10' -> the seeds, as ranges."""
    ranges: list[range] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UsageError(f"--seeds {text!r} is not a seed list; write e.g. 0-99 or 1,5,9")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise UsageError(f"--seeds range {first}-{last} runs backwards; write {last}-{first}")
        ranges.append(range(first, last + 1))
    return Seeds(ranges)


def latents(seeds: Sequence[int], latent_dim: int) -> torch.Tensor:
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


@dataclass
class SamplePlan:
    """What to generate: a seed per image (its latent, unless `walk` gives the latents), a label
    per image (one fixed, or runs of `per_class` images per class), and the grid layout. Nothing
    here grows with the number of images: chunks are drawn as they are generated."""

    seeds: Sequence[int]
    latent_dim: int
    per_row: int
    label: int | None = None  # every image of this class
    per_class: int | None = None  # conditional without --label: images k*per_class.. are class k
    walk: torch.Tensor | None = None  # --interpolate: the latents of the walk
    walk_seeds: tuple[int, int] | None = None  # --interpolate: the seeds it walks between
    trunc: float = 1.0  # --trunc: latents scaled toward their mean, 0

    def __len__(self) -> int:
        return len(self.seeds)

    def chunk(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents and labels of images start..stop-1."""
        z = self.walk[start:stop] if self.walk is not None else latents(self.seeds[start:stop], self.latent_dim)
        return z * self.trunc if self.trunc != 1 else z, self.labels_of(start, stop)

    def origin(self, i: int) -> dict[str, object]:
        """Where image i comes from, for a manifest: its seed, or its frame of the walk."""
        if self.walk_seeds is None:
            return {"seed": self.seeds[i]}
        return {"frame": i, "interpolate": list(self.walk_seeds)}

    def labels_of(self, start: int, stop: int) -> torch.Tensor | None:
        if self.label is not None:
            return torch.full((stop - start,), self.label, dtype=torch.long)
        return torch.arange(start, stop) // self.per_class if self.per_class else None

    @property
    def z(self) -> torch.Tensor:
        return self.chunk(0, len(self))[0]

    @property
    def labels(self) -> torch.Tensor | None:
        return self.labels_of(0, len(self))


@dataclass
class SampleBatch:
    images: torch.Tensor  # uint8 N×C×H×W
    seeds: Sequence[int]
    labels: torch.Tensor | None
    per_row: int


def write_grid(batch: SampleBatch, out: Path) -> list[str]:
    atomic_write(out, imgs.png_bytes(imgs.grid(batch.images, batch.per_row)))
    return [str(out)]


def write_gif(batch: SampleBatch, out: Path) -> list[str]:
    """The walk as an animated GIF, one frame per image, looping."""
    atomic_write(out, imgs.gif_bytes(batch.images, GIF_FRAME_MS))
    return [str(out)]


def npz_bytes(images: torch.Tensor, **extra: np.ndarray) -> bytes:
    """uint8 N×C×H×W images as `arr_0`, N×H×W×C: the layout FID tools read (guided-diffusion's
    evaluator, `np.load(f)["arr_0"]`), with `extra` arrays beside it."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, arr_0=images.permute(0, 2, 3, 1).numpy(), **extra)
    return buffer.getvalue()


def write_npz(batch: SampleBatch, out: Path) -> list[str]:
    labels = {"labels": batch.labels.numpy()} if batch.labels is not None else {}
    atomic_write(out, npz_bytes(batch.images, seeds=np.asarray(list(batch.seeds)), **labels))
    return [str(out)]


def write_folder(model: GenerativeModel, plan: SamplePlan, device: torch.device, out: Path, checkpoint: Path,
                 classes: list[str]) -> list[str]:
    """One PNG per image plus manifest.jsonl (file, seed, label, checkpoint sha256; a walk's frames
    their index), generated and written SAMPLE_BATCH images at a time, so memory stays flat for any
    number of images; the manifest (which lists every file) is returned, not the files."""
    sha = file_sha256(checkpoint)
    manifest = out / "manifest.jsonl"
    with atomic_writer(manifest) as lines:
        for start in range(0, len(plan), SAMPLE_BATCH):
            stop = min(start + SAMPLE_BATCH, len(plan))
            z, labels = plan.chunk(start, stop)
            images = generate(model, z, labels, device)
            for i, seed in enumerate(plan.seeds[start:stop]):
                label = int(labels[i]) if labels is not None else None
                stem = f"frame{start + i:04d}" if plan.walk is not None else f"seed{seed:06d}"
                name = f"{stem}.png" if label is None else f"{stem}-class{label}.png"
                atomic_write(out / name, imgs.image_png(images[i]))
                entry = {"file": name, **plan.origin(start + i), "label": label, "checkpoint_sha256": sha}
                if label is not None and label < len(classes):
                    entry["class"] = classes[label]
                lines.write((json.dumps(entry) + "\n").encode())
    return [str(manifest)]


# ---------------------------------------------------------------- the `sample` command


def translation_grid(inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor | None) -> np.ndarray:
    """One row per input: input | output (| target), gray sides shown in RGB beside RGB ones."""
    columns = [inputs, outputs] + ([targets] if targets is not None else [])
    channels = max(c.shape[1] for c in columns)
    columns = [c.expand(-1, channels, -1, -1) for c in columns]
    return imgs.grid(torch.stack(columns, dim=1).flatten(0, 1), len(columns))


@dataclass
class Translations:
    """What `--input` names: uint8 input images, their targets where the source has them, a name each."""

    inputs: torch.Tensor
    targets: torch.Tensor | None
    names: list[str]
    source: str


def read_inputs(spec: str, config: Config, n: int | None) -> Translations:
    """`-` (one PNG on stdin), an image file, a folder of images, or NAME[:SPLIT], a dataset or paired
    folder whose pairs are made as the model's were (split test unless given), with targets."""
    cfg = config.model
    in_channels, size = cfg.in_channels or cfg.channels or 1, cfg.image_size or 1
    path = Path(spec).expanduser()
    if spec == "-":
        raw = sys.stdin.buffer.read()
        try:
            image = data.open_image(io.BytesIO(raw), in_channels)
        except Exception as err:  # noqa: BLE001 - PIL raises many types on bad bytes
            raise UsageError(f"--input - expects one image (PNG) on stdin; got {len(raw)} bytes it cannot read "
                             f"({type(err).__name__})") from err
        inputs = data.image_tensor(ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)).unsqueeze(0)
        return Translations(inputs, None, ["stdin"], "stdin")
    if path.is_file():
        return Translations(decode_inputs([path], in_channels, size), None, [path.stem], str(path))
    if path.is_dir() and not ((path / "A").is_dir() and (path / "B").is_dir()):
        files = data.image_files(path, recursive=False)[:n]
        if not files:
            raise UsageError(f"--input {spec} holds no images; give a folder of images, an image, or - for stdin")
        return Translations(decode_inputs(files, in_channels, size), None, [f.stem for f in files], str(path))
    name, split = spec.rsplit(":", 1) if ":" in spec and not path.exists() else (spec, "test")
    if name not in data.DATASETS and not Path(name).expanduser().is_dir():
        raise UsageError(f"--input {spec} is no image, folder or dataset; give an image, a folder of images, - for "
                         f"a PNG on stdin, or a dataset split such as {config.data.name}:test")
    source = pairs.load_like(config, name, config.data.data_dir, split)
    count = min(n or SAMPLE_GRID_PAIRS, len(source))
    return Translations(source.inputs[:count], source.images[:count], [f"pair{i:06d}" for i in range(count)],
                        f"{name} {split} ({source.pairs})")


def decode_inputs(files: list[Path], channels: int, size: int) -> torch.Tensor:
    images = []
    for f in files:
        try:
            images.append(data.decode_image(f, channels, size))
        except Exception as err:  # noqa: BLE001 - PIL raises many types on bad files
            raise UsageError(f"cannot read {f} as an image ({type(err).__name__}); replace or remove it") from err
    return torch.stack(images)


def translate(model: GenerativeModel, inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 inputs -> uint8 translations, SAMPLE_BATCH at a time."""
    return generate(model, imgs.from_uint8(inputs), None, device)


def run_translate(req: SampleRequest, model: GenerativeModel, loaded: ckpt.Checkpoint, kind: str,
                  device: torch.device) -> tuple[list[str], int]:
    """`sample --input`: one output per input, as a folder (+ manifest), an npz, or a grid (one
    input alone: its translation) on a file or stdout."""
    for flag, value in (("--seeds", req.seeds), ("--label", req.label), ("--interpolate", req.interpolate),
                        ("--trunc", req.trunc if req.trunc != 1 else None)):
        if value is not None:
            raise UsageError(f"{flag} chooses latents, but a {model.config.kind} model translates images and has none; "
                             "drop it and give the images with --input")
    assert req.input is not None
    given = read_inputs(req.input, loaded.config, req.n)
    outputs = translate(model, given.inputs, device)
    out = Path(req.out)
    if kind == "folder":
        sha = file_sha256(loaded.path)
        with atomic_writer(out / "manifest.jsonl") as lines:
            for i, name in enumerate(given.names):
                atomic_write(out / f"{name}.png", imgs.image_png(outputs[i]))
                entry = {"file": f"{name}.png", "input": name, "source": given.source, "checkpoint_sha256": sha}
                lines.write((json.dumps(entry) + "\n").encode())
        return [str(out / "manifest.jsonl")], len(outputs)
    if kind == "npz":
        sides = {"inputs": given.inputs} | ({"targets": given.targets} if given.targets is not None else {})
        atomic_write(out, npz_bytes(outputs, **{k: v.permute(0, 2, 3, 1).numpy() for k, v in sides.items()}))
        return [str(out)], len(outputs)
    if kind == "gif":
        raise UsageError("--out .gif animates an --interpolate walk, which a translating model has none of; "
                         "use a .png, a folder, .npz or -")
    single = len(outputs) == 1 and given.targets is None
    picture = imgs.grid(outputs, 1) if single else translation_grid(given.inputs, outputs, given.targets)
    if kind == "stdout":
        emit_bytes(imgs.png_bytes(picture))
        return ["-"], len(outputs)
    atomic_write(out, imgs.png_bytes(picture))
    return [str(out)], len(outputs)


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
    frames: int = 10  # images of the --interpolate walk
    trunc: float = 1.0  # truncation psi: latents times trunc
    device: str = "auto"
    force: bool = False
    input: str | None = None  # images for a translating model (pix2pix) to translate
    best_of: int | None = None  # cvae: candidates its classifier picks among; None: as trained


def choose_best_of(model: GenerativeModel, path: Path, k: int | None) -> None:
    """`--best-of K` at sample, eval or export time: a cvae's stored classifier picks among K candidates
    instead of the count it was trained with (1: the plain draw, e.g. to score or ship the decoder alone)."""
    if k is None:
        return
    check_range("--best-of", k)
    if not picks_best_of(model):
        raise UsageError(f"--best-of: {path} holds a {model.config.kind} with no classifier to pick samples with "
                         "(a cvae trained with --best-of 2 or more has one): drop --best-of")
    model.generating_half().pick_best_of(k)
    model.config.best_of = k


def picks_best_of(model: GenerativeModel) -> bool:
    """Whether the model's samples are picked among candidates by a stored classifier (a cvae's critic)."""
    return getattr(model.generating_half(), "critic", None) is not None


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
    return {".png": "grid", ".npz": "npz", ".gif": "gif"}.get(suffix, "folder" if not suffix else "unknown")


def check_output(out: str, kind: str, force: bool) -> None:
    path = Path(out)
    if kind == "unknown":
        raise UsageError(f"--out {out!r}: use a .png grid, a .gif walk, a .npz array, a folder, or - for PNG bytes on stdout")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose a folder name or a .png/.gif/.npz file")
    exists = path.is_dir() and any(path.iterdir()) if kind == "folder" else kind != "stdout" and path.exists()
    if exists and not force:
        raise UsageError(f"{out} already exists; pass --force to overwrite it or choose another --out")


def plan_batch(req: SampleRequest, model: GenerativeModel, classes: list[str]) -> SamplePlan:
    """Seeds, labels and grid layout for the request (seeds, labels, interpolation); an output held in
    memory whole (a grid, an npz, stdout) is refused here when it cannot fit, before anything is drawn."""
    cfg = model.config
    if req.label is not None and not model.conditional:
        raise UsageError(f"--label needs a conditional model (cgan, cvae); this checkpoint is a {cfg.kind}")
    label = parse_label(req.label, classes, cfg.num_classes) if req.label is not None else None
    if req.interpolate is not None:
        if req.frames < 2:
            raise UsageError(f"--frames must be at least 2 for --interpolate, got {req.frames}")
        if model.conditional and label is None:
            raise UsageError("--interpolate on a conditional model needs --label: the class to walk in")
        _check_seed_range(req.interpolate)
        n = req.frames
    else:
        seeds: Sequence[int] = parse_seeds(req.seeds) if req.seeds else Seeds([range(req.seed, req.seed + (req.n or 64))])
        if req.n is not None and req.seeds and req.n != len(seeds):
            raise UsageError(f"--n {req.n} disagrees with --seeds ({len(seeds)} seeds); give one of them")
        _check_seed_range(seeds.extremes())
        n = len(seeds)
    if output_kind(req.out) != "folder":
        image_bytes = (cfg.channels or 1) * (cfg.image_size or 1) ** 2
        require_memory(n * (3 * image_bytes + 4 * model.latent_dim + 16), f"{n} images held at once for {req.out}",
                       "write them to a folder (--out DIR/, one PNG each, any number) or ask for fewer")
    walk = None
    if req.interpolate is not None:
        ends = latents(list(req.interpolate), model.latent_dim)
        walk = slerp(ends[0], ends[1], req.frames)
        seeds = [req.interpolate[0]] * req.frames
    per_row = req.per_row or (n if req.interpolate else max(1, math.ceil(math.sqrt(n))))
    per_class = None
    if model.conditional and label is None:
        per_class = math.ceil(n / cfg.num_classes)
        per_row = req.per_row or per_class
    return SamplePlan(seeds, model.latent_dim, per_row, label, per_class, walk, req.interpolate, req.trunc)


def _check_seed_range(extremes: Sequence[int]) -> None:
    for seed in extremes:
        check_range("--seed", seed)


def run_sample(req: SampleRequest) -> dict:
    """Generate and write samples; returns the JSON summary of what was written."""
    kind = output_kind(req.out)
    check_output(req.out, kind, req.force)
    check_range("--n", req.n)
    check_range("--nrow", req.per_row)
    check_range("--trunc", req.trunc)
    if kind == "gif" and req.interpolate is None:
        raise UsageError(f"--out {req.out}: a .gif animates a walk: add --interpolate A B, or write a .png grid")
    device = pick_device(req.device)
    model, loaded = ckpt.load_model(req.checkpoint, device)
    choose_best_of(model, loaded.path, req.best_of)
    if model.translates != (req.input is not None):
        raise UsageError(f"--input gives images to a model that translates them (pix2pix); this {model.config.kind} "
                         "samples from noise: drop --input" if req.input is not None else
                         f"this {model.config.kind} model translates images: give them with --input (an image, a "
                         f"folder, - for a PNG on stdin, or a dataset split such as {loaded.config.data.name}:test)")
    if model.translates:
        files, n = run_translate(req, model, loaded, kind, device)
        return {"checkpoint": str(loaded.path), "kind": loaded.config.model.kind, "n": n,
                "files": files, "device": str(device)}
    classes = loaded.config.data.classes
    plan = plan_batch(req, model, classes)
    out = Path(req.out)
    if kind == "folder":
        files = write_folder(model, plan, device, out, loaded.path, classes)
    else:
        z, labels = plan.chunk(0, len(plan))
        batch = SampleBatch(generate(model, z, labels, device), plan.seeds, labels, plan.per_row)
        if kind == "stdout":
            emit_bytes(imgs.png_bytes(imgs.grid(batch.images, batch.per_row)))
            files = ["-"]
        else:
            files = {"grid": write_grid, "gif": write_gif, "npz": write_npz}[kind](batch, out)
    return {
        "checkpoint": str(loaded.path),
        "kind": loaded.config.model.kind,
        "n": len(plan),
        "files": files,
        "device": str(device),
    }
