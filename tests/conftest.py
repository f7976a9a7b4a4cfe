"""Shared fixtures: no network, no user data roots, and tiny datasets built in tmp_path.

The builders are plain functions too (`from conftest import make_idx_dataset`) so a test can
build a dataset with its own parameters.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from idx import write_idx
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHECKOUT_RUNS = Path(__file__).resolve().parents[1] / "runs"


def runs_snapshot(runs: Path) -> dict[str, str]:
    """Every entry under a runs/ folder: link targets, and file sizes and modification times."""
    if not runs.exists() and not runs.is_symlink():
        return {}
    snapshot = {}
    for path in sorted([runs, *runs.rglob("*")]):
        stat = path.lstat()
        snapshot[str(path)] = os.readlink(path) if path.is_symlink() else f"{stat.st_size}:{stat.st_mtime_ns}"
    return snapshot


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_runs_key] = runs_snapshot(CHECKOUT_RUNS)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite fails when it changed the checkout's runs/ (a user's `runs/latest` is their work)."""
    before, after = session.config.stash[_runs_key], runs_snapshot(CHECKOUT_RUNS)
    if before != after:
        changed = sorted(set(before.items()) ^ set(after.items()))[:5]
        sys.stderr.write(f"\nFAILED: the test suite changed the checkout's {CHECKOUT_RUNS}: {changed}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_runs_key = pytest.StashKey[dict]()


@pytest.fixture(scope="session", autouse=True)
def _session_cwd(tmp_path_factory: pytest.TempPathFactory):
    """Session- and module-scoped fixtures train too: they run in a temporary working directory,
    so their runs/ and runs/latest never land in the checkout (the per-test chdir below starts later)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("session-cwd"))
        yield


@pytest.fixture(autouse=True)
def _isolated_data(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Tests never download and never see the developer's own dataset cache."""
    monkeypatch.setenv("GENAI_OFFLINE", "1")
    monkeypatch.delenv("GENAI_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # runs/ and runs/latest never land in the repo
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmp")))  # torchrun's torchelastic_* log folders


def make_idx_dataset(
    root: Path,
    folder: str = "FashionMNIST",
    n_train: int = 64,
    n_test: int = 16,
    gz: bool = False,
    size: int = 28,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`<root>/<folder>/raw/` in torchvision's layout; a split with 0 images is not written.

    Returns {"train": (images N×size×size, labels N), "test": ...} as written.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        if n == 0:
            continue
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        written[split] = (images, labels)
    return written


def make_image(size: int | tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A random image in any PIL mode used by the tests (RGB, L, RGBA, LA, P, I;16, 1)."""
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        pixels = rng.integers(0, 65536, (height, width), dtype=np.uint16)
        return Image.fromarray(pixels)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        return rgb.quantize(16)
    return rgb.convert(mode)


def make_image_folder(
    path: Path,
    classes: Sequence[str] = ("cat", "dog"),
    n_per_class: int = 5,
    size: int = 20,
    mode: str = "RGB",
    ext: str = "png",
) -> Path:
    """Class sub-folders of images, or a flat folder of images when `classes` is empty."""
    for c, name in enumerate(classes or [""]):
        folder = path / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            make_image(size, mode, seed=100 * c + i).save(folder / f"img{i:03d}.{ext}")
    return path


@pytest.fixture
def idx_root(tmp_path: Path) -> Path:
    """A data root holding a tiny FashionMNIST (64 train, 16 test) in torchvision's layout."""
    make_idx_dataset(tmp_path / "datasets")
    return tmp_path / "datasets"


@pytest.fixture
def labelled_folder(tmp_path: Path) -> Path:
    """Two classes (cat, dog) of 5 RGB 20×20 PNGs each."""
    return make_image_folder(tmp_path / "labelled")


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    """Eight loose RGB 20×20 PNGs, no classes."""
    return make_image_folder(tmp_path / "flat", classes=(), n_per_class=8)


# ---------------------------------------------------------------- --max-time budgets


class FakeClock:
    """training's time.monotonic for budget tests: every reading advances `tick` seconds, so a busy
    machine cannot change what is tested; raise `tick` to make later steps dearer."""

    def __init__(self, tick: float = 0.001) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def budget_plans(monkeypatch: pytest.MonkeyPatch, clock: FakeClock, then_tick: float | None = None) -> list[int]:
    """Put `clock` in training's place and return the list that fills with each run length a budgeted
    run plans or revises (as it saves config.json); `then_tick` becomes the clock's tick at the first."""
    from genai_cli import checkpoint as ckpt
    from genai_cli import training

    plans: list[int] = []
    save_config = ckpt.save_config

    def record(run_dir, config) -> None:
        if config.train.steps != training.BUDGET_PROVISIONAL_STEPS:
            plans.append(config.train.steps)
            clock.tick = then_tick or clock.tick
        save_config(run_dir, config)

    monkeypatch.setattr(training.time, "monotonic", clock)
    monkeypatch.setattr(training.ckpt, "save_config", record)
    return plans


# ---------------------------------------------------------------- trained tiny models (session)

TINY_TRAIN_FLAGS = {"model.width": 8, "model.image_size": 16, "train.batch_size": 8, "train.steps": 3, "train.log_every": 1}


def tiny_train(kind: str, data_dir: Path, out: Path, **extra):
    """Train a tiny model in-process on the FashionMNIST IDX root `data_dir`; returns the TrainResult."""
    from genai_cli import training

    flags = {"model.kind": kind, "data.name": "fashion-mnist", "data.data_dir": str(data_dir), **TINY_TRAIN_FLAGS, **extra}
    return training.train(flags, out=str(out))


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FashionMNIST IDX root shared by the session's trained models (64 train images)."""
    root = tmp_path_factory.mktemp("tiny-data")
    make_idx_dataset(root)
    return root


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory, tiny_data_root: Path) -> dict[str, Path]:
    """Run directories of one tiny dcgan, cgan and pix2pix (on edges), trained once per session; treat as read-only."""
    base = tmp_path_factory.mktemp("tiny-runs")
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENAI_OFFLINE", "1")
        for kind in ("dcgan", "cgan", "pix2pix"):
            runs[kind] = Path(tiny_train(kind, tiny_data_root, base / kind).run_dir)
    return runs
