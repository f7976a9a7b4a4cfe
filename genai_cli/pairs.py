"""Paired images for translation models: (input, target) from folders, or inputs derived from any dataset.

A `PairedSource` is an in-memory source whose `labels` slot holds each target's input image
(uint8 N×C×H×W): batches, seeded order, ranks and resume work unchanged, and the training loop
hands the inputs to the objective where class labels go. Pairs come from:

- a folder of side-by-side A|B images (the layout of the pix2pix datasets: facades, maps,
  edges2shoes), read from its `train/` or `test/` (else `val/`) sub-folder when there is one;
- a folder with sub-folders `A/` and `B/` whose files pair by name (extension aside);
- any dataset genai reads, the input derived from each image: `edges` (Sobel magnitude,
  thresholded: black lines on white), `masked` (the centre square mid-grey: inpainting) or
  `downsampled` (4× area-downsampled, then blown back up: super-resolution).

`--direction BtoA` swaps the sides: for derived pairs, the image becomes the input.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from genai_cli import console
from genai_cli.config import Config
from genai_cli.data import (
    DATASETS,
    DECODE_THREADS,
    FOLDER_IMAGE_SIZE,
    GRAY_MODES,
    InMemorySource,
    convert_images,
    image_files,
    image_tensor,
    load_dataset,
    open_image,
    peek_mode,
)
from genai_cli.errors import UsageError
from genai_cli.resources import require_memory

DERIVED = ("edges", "masked", "downsampled")
PAIRS = ("folder", *DERIVED)
DIRECTIONS = ("AtoB", "BtoA")
EDGE_THRESHOLD = 0.5  # Sobel magnitude on [0, 1] intensities above which a pixel is an edge
DOWNSAMPLE = 4
MASK_FRACTION = 0.5  # side of the masked centre square, as a fraction of the image side


@dataclass
class PairedSource(InMemorySource):
    """`images` are the targets; `labels` holds the input image of each pair (uint8 N×C×H×W)."""

    pairs: str = "folder"

    @property
    def inputs(self) -> torch.Tensor:
        assert self.labels is not None
        return self.labels

    @property
    def in_channels(self) -> int:
        return self.inputs.shape[1]


def default_pairs(name: str) -> str:
    """A folder that is no registered dataset holds pairs; a dataset gets its edges as inputs."""
    return "folder" if name not in DATASETS and Path(name).expanduser().is_dir() else "edges"


def load_pairs(name: str, pairs: str, direction: str, *, data_dir: str | None = None, split: str = "train",
               channels: int | None = None, image_size: int | None = None) -> PairedSource:
    if pairs not in PAIRS:
        raise UsageError(f"--pairs must be one of {', '.join(PAIRS)}, got {pairs!r}")
    if direction not in DIRECTIONS:
        raise UsageError(f"--direction must be AtoB or BtoA, got {direction!r}")
    if pairs == "folder":
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--pairs folder needs --data to be a folder of A|B images or of A/ and B/; {name} is not "
                             f"a folder (for a dataset, derive the inputs: --pairs {', '.join(DERIVED)})")
        a, b, location = read_pair_folder(folder, split, channels, image_size or FOLDER_IMAGE_SIZE)
    else:
        source = load_dataset(name, data_dir=data_dir, split=split, channels=channels, image_size=image_size)
        b = source.all_images()
        require_memory(b.numel(), f"the {pairs} inputs of {len(b)} images", "use a smaller --image-size")
        a = torch.cat([derive(pairs, chunk) for chunk in b.split(4096)])
        name, location = source.name, source.location
    inputs, targets = (a, b) if direction == "AtoB" else (b, a)
    console.info(f"{len(targets)} pairs ({pairs}, {direction}): input {inputs.shape[1]}×{inputs.shape[-1]}², "
                 f"target {targets.shape[1]}×{targets.shape[-1]}²")
    return PairedSource(name, [], targets.shape[1], targets.shape[-1], location, inputs, targets, pairs=pairs)


def load_like(config: Config, name: str, data_dir: str | None, split: str) -> PairedSource:
    """Pairs from `name` (a dataset, or a paired folder) made as a model's training pairs were, at its
    channels and size: what `sample --input NAME:SPLIT` and `eval` translate and compare with."""
    model = config.model
    assert model.channels and model.image_size
    folder = name not in DATASETS and Path(name).expanduser().is_dir()
    if not folder and config.data.pairs not in DERIVED:
        raise UsageError(f"this model learnt from paired folders, so {name} has no inputs for it; give a folder with "
                         "A|B images or with A/ and B/")
    kind = "folder" if folder else str(config.data.pairs)
    source = load_pairs(name, kind, config.data.direction, data_dir=data_dir, split=split,
                        image_size=model.image_size, channels=None if folder else model.channels)
    source.labels = convert_images(source.inputs, model.in_channels or model.channels, model.image_size)
    source.images = convert_images(source.images, model.channels, model.image_size)
    source.channels = model.channels
    return source


# ---------------------------------------------------------------- derived inputs


def derive(kind: str, images: torch.Tensor) -> torch.Tensor:
    """uint8 N×C×H×W images -> uint8 inputs of the same shape."""
    x = images.float() / 255
    if kind == "edges":
        gray = x.mean(1, keepdim=True)
        sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        kernels = torch.stack([sobel, sobel.T]).unsqueeze(1)
        gx, gy = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels).unbind(1)
        out = (gx.hypot(gy) <= EDGE_THRESHOLD).float().unsqueeze(1).expand_as(x)
    elif kind == "masked":
        size = x.shape[-1]
        side = max(1, round(size * MASK_FRACTION))
        lo = (size - side) // 2
        out = x.clone()
        out[..., lo : lo + side, lo : lo + side] = 0.5
    elif kind == "downsampled":
        small = F.interpolate(x, size=[max(1, s // DOWNSAMPLE) for s in x.shape[-2:]], mode="area")
        out = F.interpolate(small, size=x.shape[-2:], mode="nearest")
    else:
        raise ValueError(f"unknown derived pairs {kind!r}")
    return (out * 255).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- paired folders


def read_pair_folder(folder: Path, split: str, channels: int | None,
                     size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(A images, B images, where they were read) from an A/ B/ folder or one of A|B images."""
    if (folder / "A").is_dir() and (folder / "B").is_dir():
        pairs = named_pairs(folder / "A", folder / "B")
        where = folder
    else:
        where = next((folder / s for s in (split, *(("val",) if split == "test" else ())) if (folder / s).is_dir()),
                     folder)
        files = image_files(where, recursive=False)
        if not files:
            raise UsageError(f"no paired images in {where}: give a folder of side-by-side A|B images, or one with A/ "
                             "and B/ sub-folders whose files pair by name")
        pairs = [(f, f) for f in files]
    require_memory(2 * len(pairs) * 3 * size * size, f"{len(pairs)} pairs at {size}x{size}", "use a smaller --image-size")
    side_channels = [channels or side_modes([p[i] for p in pairs]) for i in (0, 1)]
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        decoded = list(pool.map(lambda p: decode_pair(*p, side_channels, size), pairs))
    a, b = (torch.stack([d[i] for d in decoded]) for i in (0, 1))
    return a, b, str(where.resolve())


def named_pairs(a_dir: Path, b_dir: Path) -> list[tuple[Path, Path]]:
    """A/x.* with B/x.*; a file without its partner is a usage error that names it."""
    a_files = {f.stem: f for f in image_files(a_dir, recursive=False)}
    b_files = {f.stem: f for f in image_files(b_dir, recursive=False)}
    for mine, theirs, other in ((a_files, b_files, b_dir), (b_files, a_files, a_dir)):
        if lonely := sorted(set(mine) - set(theirs)):
            first = mine[lonely[0]]
            more = f" (and {len(lonely) - 1} more)" if len(lonely) > 1 else ""
            raise UsageError(f"{first} has no partner in {other}{more}: A/ and B/ files pair by name; "
                             f"add {other / first.name} or remove it")
    if not a_files:
        raise UsageError(f"no images in {a_dir} or {b_dir}; add pairs with the same file name in both")
    return [(a_files[stem], b_files[stem]) for stem in sorted(a_files)]


def side_modes(files: list[Path]) -> int:
    """1 channel when every image of a side is grayscale, else 3."""
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        modes = list(pool.map(peek_mode, dict.fromkeys(files)))
    return 1 if all(m in GRAY_MODES for m in modes) else 3


def decode_pair(a_path: Path, b_path: Path, channels: list[int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides at size × size; a file is side-by-side A|B when both paths are that file."""
    try:
        a, b = open_image(a_path, channels[0]), open_image(b_path, channels[1])
    except Exception as err:  # noqa: BLE001 - PIL raises many types on bad files
        raise UsageError(f"cannot read the pair {a_path.name} / {b_path.name} ({type(err).__name__}); "
                         "replace or remove it") from err
    if a_path == b_path:
        w, h = a.size
        if w != 2 * h:
            raise UsageError(f"{a_path} is {w}x{h}, not two squares side by side (A|B images are twice as wide as "
                             "tall); crop it, or use A/ and B/ folders for pairs")
        a, b = a.crop((0, 0, h, h)), b.crop((h, 0, w, h))
    elif a.size != b.size:
        raise UsageError(f"{a_path} is {a.size[0]}x{a.size[1]} but its partner {b_path} is {b.size[0]}x{b.size[1]}; "
                         "a pair must be the same size: resize one of them")
    fit = lambda side: image_tensor(ImageOps.fit(side, (size, size), Image.Resampling.BICUBIC))  # noqa: E731
    return fit(a), fit(b)
