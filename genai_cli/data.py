"""Datasets as uint8 image tensors: registered datasets, image folders, deterministic batches.

`load_dataset` turns a name into an `ImageSource`. Registered names (mnist, fashion-mnist,
kmnist, cifar10) are read from torchvision's raw layout under the first data root that holds
them (see `resolve_data_roots`), by the reader of their file format (`FILE_FORMATS`: IDX,
CIFAR's binary batches); any other name is a path, read by the first of `PATH_FORMATS` that
takes it (an image folder, an .npz of images).
Small datasets live in memory as one N×C×H×W uint8 tensor and batches are gathered by
index; folders too big for `MEMORY_BUDGET_BYTES` stream through DataLoader workers. Both
draw the same seeded permutation, so a seed gives the same batches on every device, for a
resumed run and for any number of ranks. Nothing here unpickles: IDX and CIFAR's binary
format are parsed directly.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from genai_cli import console
from genai_cli.config import MAX_IMAGE_SIZE
from genai_cli.errors import DataError, UsageError
from genai_cli.fileio import require_regular_file
from genai_cli.registry import Registry, normalise_name
from genai_cli.resources import require_memory

# Where Debian's `dataset-*` packages install; tests point this elsewhere.
DEBIAN_DIRS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
MEMORY_BUDGET_BYTES = 2 * 1024**3  # decoded folders larger than this stream from disk
FOLDER_IMAGE_SIZE = 64  # default square size for image folders
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N"}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
DECODE_THREADS = min(8, os.cpu_count() or 1)
STREAM_WORKERS = min(4, os.cpu_count() or 1)

# uint8 images and what conditions them: int64 labels, a paired source's uint8 input images, or None
Batch = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class DatasetSpec:
    folder: str  # torchvision's folder (and class) name under a data root
    fmt: str  # a key of FILE_FORMATS: "idx" (MNIST family) or "cifar" (CIFAR-10 binary version)
    classes: tuple[str, ...] = ()  # empty: read from the dataset's files

    @property
    def format(self) -> FileFormat:
        return FILE_FORMATS[self.fmt]


FASHION_CLASSES = "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
KMNIST_CLASSES = "o,ki,su,tsu,na,ha,ma,ya,re,wo"  # romaji of the ten hiragana
DATASETS: Registry[DatasetSpec] = Registry("dataset")
DATASETS.add("mnist", DatasetSpec("MNIST", "idx", tuple("0123456789")))
DATASETS.add("fashion-mnist", DatasetSpec("FashionMNIST", "idx", tuple(FASHION_CLASSES.split(","))))
DATASETS.add("kmnist", DatasetSpec("KMNIST", "idx", tuple(KMNIST_CLASSES.split(","))))
DATASETS.add("cifar10", DatasetSpec("cifar-10-batches-bin", "cifar"))  # classes: batches.meta.txt


def dataset_names() -> list[str]:
    return DATASETS.names()


# ---------------------------------------------------------------- sources and batching


@dataclass
class ImageSource:
    """Images of one dataset, converted to `channels` × `image_size`²; see `epoch_batches`."""

    name: str
    classes: list[str]
    channels: int
    image_size: int
    location: str
    labels: torch.Tensor | None  # int64 N, None when unlabelled

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def batches_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Full global batches only (drop_last), so every step sees the same batch size."""
        if batch_size < 1 or world_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        count = len(self) // (batch_size * world_size)
        if count == 0:
            raise UsageError(
                f"batch size {batch_size} × {world_size} rank(s) exceeds the {len(self)} images "
                f"of {self.name}; use a smaller --batch-size"
            )
        return count

    def epoch_batches(
        self,
        epoch: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """uint8 N×C×H×W images on `device` and int64 labels (None when unlabelled).

        The order is a permutation drawn on the CPU from (seed, epoch) alone, so it is the
        same on every device and for a resumed run; `start_batch` skips the batches already
        done. Rank r takes slice r of each global batch of batch_size × world_size, so the
        ranks of a 2-rank run together see what a 1-rank run with twice the batch sees.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        count = self.batches_per_epoch(batch_size, world_size)
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        order = torch.randperm(len(self), generator=generator)
        global_batch = batch_size * world_size
        starts = [b * global_batch + rank * batch_size for b in range(max(start_batch, 0), count)]
        return self._batches([order[s : s + batch_size] for s in starts], device)

    def in_order(self, batch_size: int, device: torch.device) -> Iterator[Batch]:
        """Every image once, in dataset order (the last batch may be smaller): for passes that are no training."""
        return self.batches_at(torch.arange(len(self)), batch_size, device)

    def batches_at(self, rows: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[Batch]:
        """The images at `rows` once, in that order, `batch_size` at a time (the last batch may be smaller)."""
        return self._batches(list(rows.split(batch_size)), device)

    def _batches(self, indices: list[torch.Tensor], device: torch.device) -> Iterator[Batch]:
        for index, images in zip(indices, self._images_at(indices)):
            labels = None if self.labels is None else self.labels[index].to(device)
            yield images.to(device), labels

    def _images_at(self, indices: list[torch.Tensor]) -> Iterable[torch.Tensor]:
        """One uint8 CPU batch per index tensor, in order."""
        raise NotImplementedError

    def all_images(self) -> torch.Tensor:
        raise NotImplementedError

    def all_labels(self) -> torch.Tensor | None:
        return self.labels


def _epoch_seed(seed: int, epoch: int) -> int:
    """A stable 64-bit seed per (seed, epoch); Python's hash() is not stable across builds."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little")


@dataclass
class InMemorySource(ImageSource):
    images: torch.Tensor  # uint8 N×C×H×W
    _resident: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    def _batches(self, indices: list[torch.Tensor], device: torch.device) -> Iterator[Batch]:
        """The dataset moves to the device once (uint8, tens of MB for MNIST-sized data) and each
        epoch's order with it, so a step costs no host-to-device copy and no host sync."""
        if not indices:
            return
        key = str(device)
        if key not in self._resident:
            self._resident[key] = (self.images.to(device), None if self.labels is None else self.labels.to(device))
        images, labels = self._resident[key]
        for index in torch.cat(indices).to(device).split([len(i) for i in indices]):
            yield images.index_select(0, index), None if labels is None else labels.index_select(0, index)

    def all_images(self) -> torch.Tensor:
        return self.images


@dataclass
class StreamingSource(ImageSource):
    """A folder too large for memory: DataLoader workers decode each batch from disk.

    It is its own map-style dataset (`self[i]` decodes file i) for those workers."""

    files: list[Path]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = _try_decode(self.files[i], self.channels, self.image_size)
        if image is None:
            raise DataError(f"cannot decode {self.files[i]}; delete or replace it")
        return image

    def _images_at(self, indices: list[torch.Tensor]) -> Iterable[torch.Tensor]:
        batches = [index.tolist() for index in indices]
        return torch.utils.data.DataLoader(self, batch_sampler=batches, num_workers=STREAM_WORKERS)

    def all_images(self) -> torch.Tensor:
        console.info(f"decoding all {len(self)} images of {self.name} into memory")
        images, ok = _decode_all(self.files, self.channels, self.image_size)
        if not ok.all():
            raise DataError(f"cannot decode {self.files[int(ok.argmin())]}; delete or replace it")
        return images


# ---------------------------------------------------------------- entry point


def resolve_data_roots(data_dir: str | None) -> list[Path]:
    """Roots searched in order: `data_dir` (--data-dir), $GENAI_DATA_DIR, then the cache
    `$XDG_CACHE_HOME/genai/datasets` (default ~/.cache/genai/datasets). The first one is
    where downloads and Debian's decompressed files are written."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    candidates = [data_dir, os.environ.get("GENAI_DATA_DIR"), cache / "genai" / "datasets"]
    roots: list[Path] = []
    for candidate in candidates:
        if candidate and Path(candidate).expanduser() not in roots:
            roots.append(Path(candidate).expanduser())
    return roots


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    split: str = "train",
    channels: int | None = None,
    image_size: int | None = None,
    download: bool = True,
) -> ImageSource:
    """A registered dataset or an image folder, converted to `channels` × `image_size`².

    None keeps the dataset's own: 1 channel and 28 px for the MNIST family, 3 and 32 for
    cifar10; folders are 1 channel only when every image is grayscale, and 64 px. A
    registered name wins over a folder of that name (write ./mnist for the folder).
    """
    if split not in ("train", "test"):
        raise UsageError(f"unknown split {split!r}; choose 'train' or 'test'")
    if channels not in (None, 1, 3):
        raise UsageError(f"channels must be 1 or 3, got {channels}")
    if image_size is not None and not 1 <= image_size <= MAX_IMAGE_SIZE:  # before decoding: 100000 px needs terabytes
        raise UsageError(
            f"image size must be between 1 and {MAX_IMAGE_SIZE} pixels, got {image_size}; "
            "choose an --image-size in that range (e.g. 28, 32, 64)"
        )
    path = Path(name).expanduser()
    if name in DATASETS:
        source = _load_registered(name, split, data_dir, channels, image_size, download)
    elif reader := next((f for f in PATH_FORMATS if f.takes(path)), None):
        if split != "train":
            console.info(f"{reader.what} have no splits; using every image in {name}")
        source = reader.load(path, channels, image_size)
    else:
        raise UsageError(f"{DATASETS.unknown_message(name)}; or give an image folder path")
    labels = f"{len(source.classes)} classes" if source.labelled else "unlabelled"
    console.info(
        f"{source.name}: {len(source)} images {source.channels}×{source.image_size}×"
        f"{source.image_size}, {labels}, from {source.location}"
    )
    return source


# ---------------------------------------------------------------- registered datasets


def _load_registered(
    name: str,
    split: str,
    data_dir: str | None,
    channels: int | None,
    image_size: int | None,
    download: bool,
) -> InMemorySource:
    key = normalise_name(name)
    spec, roots = DATASETS.get(key), resolve_data_roots(data_dir)
    files = spec.format.split_files(split)
    paths = _locate(key, spec, roots, files)
    if paths is None:
        outcome = _try_download(spec, roots[0], split, download)
        paths = _locate(key, spec, roots, files)
    if paths is None:
        raise DataError(_not_found_message(key, spec, roots, split, outcome))
    images, labels, classes = spec.format.read(paths)
    classes = list(spec.classes) or classes
    if len(labels) and int(labels.max()) >= len(classes):
        raise DataError(
            f"{paths[-1]} has label {int(labels.max())} but {key} has "
            f"{len(classes)} classes; replace the file with the original"
        )
    channels, image_size = channels or images.shape[1], image_size or images.shape[-1]
    require_memory(len(images) * channels * image_size**2, f"the {len(images)} images of {key} at {image_size}x{image_size}",
                   "use a smaller --image-size")
    images = convert_images(images, channels, image_size)
    return InMemorySource(
        key, classes, images.shape[1], images.shape[-1], str(paths[0].parent), labels, images
    )


def _data_folder(spec: DatasetSpec, root: Path) -> Path:
    return root / spec.folder / spec.format.subfolder


def _find(folder: Path, filename: str) -> Path | None:
    """The decompressed file if present (faster), else its .gz; a FIFO or device there is refused."""
    for path in (folder / filename, folder / f"{filename}.gz"):
        require_regular_file(path, "replace it with the dataset file", DataError)
        if path.is_file():
            return path
    return None


def _find_all(folder: Path, files: list[str]) -> list[Path] | None:
    found = [_find(folder, f) for f in files]
    return None if None in found else found  # type: ignore[return-value]


def _locate(key: str, spec: DatasetSpec, roots: list[Path], files: list[str]) -> list[Path] | None:
    for root in roots:
        if found := _find_all(_data_folder(spec, root), files):
            return found
    debian = DEBIAN_DIRS.get(key)
    if debian is not None and (found := _find_all(debian, files)):
        return _import_debian(spec, debian, _data_folder(spec, roots[0]), files, found)
    return None


def _import_debian(
    spec: DatasetSpec, source: Path, dest: Path, files: list[str], found: list[Path]
) -> list[Path]:
    """Decompress Debian's files into the torchvision layout: they are recompressed, so
    torchvision's md5 check would reject the .gz files and try the network."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for name in spec.format.split_files("train") + spec.format.split_files("test"):
            if (path := _find(source, name)) is not None:
                tmp = dest / f".{name}.tmp"
                tmp.write_bytes(_read_bytes(path))
                os.replace(tmp, dest / name)
    except OSError as err:
        console.info(f"cannot write {dest} ({err.strerror or err}); reading the files in {source}")
        return found
    console.info(f"decompressed Debian's files from {source} into {dest}")
    return [dest / name for name in files]


def _try_download(spec: DatasetSpec, root: Path, split: str, allowed: bool) -> str:
    """Download into `root` if allowed; returns what happened, for the not-found message."""
    if not allowed:
        return "download disabled"
    if os.environ.get("GENAI_OFFLINE", "") not in ("", "0"):
        return "not downloaded: GENAI_OFFLINE is set"
    try:
        _download(spec, root, split)
    except Exception as err:  # noqa: BLE001 - network, md5 and archive errors: no download
        return f"download failed: {(str(err) or repr(err)).splitlines()[0]}"
    return "downloaded, but the files are still missing"


def _download(spec: DatasetSpec, root: Path, split: str) -> None:
    """torchvision's downloaders; they print to stdout, which carries data, so redirect it."""
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        if spec.format.archive:
            download_and_extract_archive(spec.format.archive, str(root), md5=spec.format.archive_md5)
        else:  # the MNIST family's own downloader, named like its folder
            getattr(torchvision.datasets, spec.folder)(str(root), train=split == "train", download=True)


def _not_found_message(
    key: str, spec: DatasetSpec, roots: list[Path], split: str, failure: str
) -> str:
    where = _data_folder(spec, roots[0])
    other = "test" if split == "train" else "train"
    wanted = ", ".join(f"{f}[.gz]" if spec.format.gzipped else f for f in spec.format.split_files(split))
    for root in roots:
        if _find_all(_data_folder(spec, root), spec.format.split_files(other)):
            return (
                f"{key} has no {split} split in {_data_folder(spec, root)} (only the {other} "
                f"files are there); use --split {other}, or put {wanted} in that folder"
            )
    apt = f", or `apt-get install dataset-{key}`" if key in DEBIAN_DIRS else ""
    searched = ", ".join(str(_data_folder(spec, root)) for root in roots)
    return (
        f"dataset {key} ({split} split) not found ({failure}); put {wanted} in {where}, or "
        f"point --data-dir or $GENAI_DATA_DIR at a folder holding {where.relative_to(roots[0])}"
        f"{apt}; searched: {searched}"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path} ({err}); delete it and download it again") from err


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x0000 08 <ndim>), checked against its header."""
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(
            f"{path} is not an IDX file of {ndim}-D unsigned bytes; replace it with "
            "the original (delete it to download it again)"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != header + int(np.prod(dims)):
        raise DataError(
            f"{path} is truncated or corrupt: its header says {dims} but it holds "
            f"{len(data) - header} bytes; delete it and download it again"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_idx_split(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, labels = _read_idx(paths[0], 3), _read_idx(paths[1], 1)
    if len(images) != len(labels):
        raise DataError(
            f"{paths[0]} holds {len(images)} images but {paths[1]} holds "
            f"{len(labels)} labels; replace them with matching files"
        )
    return (
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        [],
    )


def _read_cifar(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """CIFAR-10 binary batches: records of 1 label byte + 3072 bytes of CHW pixels."""
    *batches, meta = paths
    chunks = []
    for path in batches:
        data = _read_bytes(path)
        if not data or len(data) % 3073:
            raise DataError(
                f"{path} is truncated or corrupt ({len(data)} bytes is not a whole "
                "number of 3073-byte records); delete it and download it again"
            )
        chunks.append(np.frombuffer(data, np.uint8).reshape(-1, 3073))
    records = np.concatenate(chunks)
    classes = [line.strip() for line in _read_bytes(meta).decode().splitlines() if line.strip()]
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(records[:, 0].astype(np.int64)), classes


@dataclass(frozen=True)
class FileFormat:
    """How a registered dataset's files are named, laid out, fetched and read."""

    split_files: Callable[[str], list[str]]  # split -> the files it needs
    subfolder: str  # under <root>/<spec.folder>: torchvision's "raw" for the MNIST family
    read: Callable[[list[Path]], tuple[torch.Tensor, torch.Tensor, list[str]]]  # images, labels, classes ([]: the spec's)
    gzipped: bool = False  # the files usually come as NAME.gz (either is read; the not-found message says so)
    archive: str | None = None  # URL of one archive holding every split (else torchvision's downloader)
    archive_md5: str | None = None


def _idx_files(split: str) -> list[str]:
    prefix = "train" if split == "train" else "t10k"
    return [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]


def _cifar_files(split: str) -> list[str]:
    batches = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    return [*batches, "batches.meta.txt"]


FILE_FORMATS = {
    "idx": FileFormat(_idx_files, "raw", _read_idx_split, gzipped=True),
    "cifar": FileFormat(_cifar_files, "", _read_cifar, archive=CIFAR_URL, archive_md5=CIFAR_MD5),
}


def convert_images(images: torch.Tensor, channels: int, size: int, chunk: int = 4096) -> torch.Tensor:
    """Channels and size of a uint8 N×C×H×W tensor, once at load, in chunks to bound memory."""
    if images.shape[1] == channels and images.shape[-2:] == (size, size):
        return images
    out = torch.empty((len(images), channels, size, size), dtype=torch.uint8)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R BT.601
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].float()
        if x.shape[1] != channels:
            x = x.repeat(1, 3, 1, 1) if channels == 3 else (x * luma).sum(1, keepdim=True)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out[start : start + chunk] = x.round().clamp(0, 255).to(torch.uint8)
    return out


# ---------------------------------------------------------------- image folders


def _load_folder(folder: Path, channels: int | None, image_size: int | None) -> ImageSource:
    """Decoded into memory when it fits in MEMORY_BUDGET_BYTES, else streamed from disk."""
    files, labels, classes = _scan_folder(folder)
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        modes = list(pool.map(peek_mode, files))
    skipped = [f for f, mode in zip(files, modes) if mode is None]
    keep = [i for i, mode in enumerate(modes) if mode is not None]
    channels = channels or (1 if all(modes[i] in GRAY_MODES for i in keep) else 3)
    size = image_size or FOLDER_IMAGE_SIZE
    files, labels = [files[i] for i in keep], None if labels is None else labels[keep]
    images = None
    if len(files) * channels * size * size <= MEMORY_BUDGET_BYTES:
        images, ok = _decode_all(files, channels, size)
        skipped += [f for f, good in zip(files, ok.tolist()) if not good]
        images, labels = images[ok], None if labels is None else labels[ok]
    if (len(files) if images is None else len(images)) == 0:
        raise DataError(
            f"none of the {len(skipped)} image files in {folder} can be read ({_names(skipped)}); "
            "replace them with readable images or point --data at another folder"
        )
    _warn_skipped(skipped)
    common = (str(folder), classes, channels, size, str(folder.resolve()), labels)
    if images is None:
        console.info(f"{folder} is larger than MEMORY_BUDGET_BYTES; streaming it from disk")
        return StreamingSource(*common, files=files)
    return InMemorySource(*common, images=images)


def _scan_folder(folder: Path) -> tuple[list[Path], torch.Tensor | None, list[str]]:
    """Class sub-folders (sorted) give labels; a folder with loose images only is unlabelled."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = {d.name: image_files(d, recursive=True) for d in subdirs}
    loose = image_files(folder, recursive=False)
    if not any(per_class.values()):
        if not loose:
            raise DataError(
                f"no images in {folder} or its sub-folders (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}); add images there or point --data at another folder"
            )
        return loose, None, []
    if loose:
        console.warn(
            f"ignoring {len(loose)} image(s) directly in {folder}: with class "
            "sub-folders present only their images are used"
        )
    if empty := [name for name, found in per_class.items() if not found]:
        console.warn(f"ignoring class folder(s) without images in {folder}: {', '.join(empty)}")
    classes = [name for name, found in per_class.items() if found]
    files = [f for name in classes for f in per_class[name]]
    labels = [i for i, name in enumerate(classes) for _ in per_class[name]]
    return files, torch.tensor(labels, dtype=torch.int64), classes


def image_files(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def peek_mode(path: Path) -> str | None:
    """The image mode from the header alone (cheap); None when it is not an image."""
    try:
        with Image.open(path) as image:
            return image.mode
    except Exception:  # noqa: BLE001 - PIL raises many types on bad files
        return None


def _decode_all(files: list[Path], channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every file into one tensor with a thread pool (PIL releases the GIL while it
    decodes); returns the images and a bool mask of the files that decoded."""
    images = torch.zeros((len(files), channels, size, size), dtype=torch.uint8)
    ok = torch.zeros(len(files), dtype=torch.bool)

    def decode(i: int) -> None:
        image = _try_decode(files[i], channels, size)
        if image is not None:
            images[i], ok[i] = image, True

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for done, _ in enumerate(pool.map(decode, range(len(files))), start=1):
            if done % 5000 == 0:
                console.info(f"decoded {done}/{len(files)} images")
    return images, ok


def _try_decode(path: Path, channels: int, size: int) -> torch.Tensor | None:
    try:
        return decode_image(path, channels, size)
    except Exception:  # noqa: BLE001 - PIL raises many types on bad files
        return None


def decode_image(path: Path, channels: int, size: int) -> torch.Tensor:
    """One file -> uint8 C×size×size: a bicubic resize of the shorter side to `size` and a centre crop."""
    return image_tensor(ImageOps.fit(open_image(path, channels), (size, size), Image.Resampling.BICUBIC))


def open_image(path: Path | BinaryIO, channels: int) -> Image.Image:
    """One file, decoded as L (channels 1) or RGB: transparency on white, 16-bit scaled to 8."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit range, not 0..255
            pixels = np.asarray(image).astype(np.float32) / 257.0
            image = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), "L")
        if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        if image.mode not in ("L", "RGB"):  # P, 1, CMYK, YCbCr, RGBA after compositing, ...
            image = image.convert("RGB")
        return image.convert("L" if channels == 1 else "RGB")


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An L or RGB PIL image -> uint8 C×H×W."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------- .npz arrays of images


NPZ_KEYS = ("arr_0", "images")  # genai sample's key (as the common evaluators read), and older genai files'


def _load_npz(path: Path, channels: int | None, image_size: int | None) -> InMemorySource:
    """uint8 N×H×W×C images (N×H×W for gray) under `arr_0`, or `images` in files genai wrote before;
    never unpickled. Labels are not read: an array has no class names."""
    require_regular_file(path, "pass an .npz file of images", DataError)
    try:
        with np.load(path, allow_pickle=False) as npz:
            key = next((k for k in NPZ_KEYS if k in npz.files), None)
            if key is None:
                raise DataError(f"{path} holds no images (its arrays: {', '.join(npz.files) or 'none'}); genai reads "
                                "'arr_0', uint8 N×H×W×C, as `genai sample --out NAME.npz` writes it")
            pixels = npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # pickled arrays raise ValueError
        raise DataError(f"cannot read {path} as an .npz of images ({type(err).__name__}: {str(err)[:120]}); "
                        "write it with numpy.savez, without object arrays") from err
    gray = pixels.ndim == 3
    if pixels.dtype != np.uint8 or not (gray or pixels.ndim == 4 and pixels.shape[-1] in (1, 3)) \
            or not len(pixels) or pixels.shape[1] != pixels.shape[2]:
        raise DataError(f"{path}: '{key}' is {pixels.dtype} of shape {list(pixels.shape)}; genai reads square uint8 "
                        "images, N×H×W×C with C 1 or 3 (or N×H×W for gray)")
    images = torch.from_numpy(pixels[..., None] if gray else pixels).permute(0, 3, 1, 2)
    channels, size = channels or images.shape[1], image_size or images.shape[-1]
    require_memory(len(images) * channels * size**2, f"the {len(images)} images of {path} at {size}x{size}",
                   "use a smaller --image-size")
    images = convert_images(images.contiguous(), channels, size)
    return InMemorySource(str(path), [], channels, size, str(path.resolve()), None, images)


@dataclass(frozen=True)
class PathFormat:
    """A dataset given as a path (not a registered name): which paths it takes and how they are read."""

    what: str  # plural, for messages
    takes: Callable[[Path], bool]
    load: Callable[[Path, int | None, int | None], ImageSource]  # (path, channels, image size; None: its own)


PATH_FORMATS = (
    PathFormat("image folders", Path.is_dir, _load_folder),
    PathFormat(".npz files", lambda path: path.suffix.lower() == ".npz" and path.exists(), _load_npz),
)


def _warn_skipped(skipped: list[Path]) -> None:
    """One warning for all unreadable files, not one per file."""
    if skipped:
        console.warn(f"skipped {len(skipped)} unreadable image file(s): {_names(skipped)}")


def _names(files: list[Path]) -> str:
    """The first few file names, for one-line messages."""
    return ", ".join(p.name for p in files[:5]) + (", ..." if len(files) > 5 else "")
