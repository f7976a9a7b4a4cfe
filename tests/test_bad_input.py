"""The catalogue of bad input, as a user meets it: one table, run through the real `genai` command.

Every row is a mistake a user can make (a damaged or foreign checkpoint, an impossible flag,
an unusable dataset, an output that cannot or must not be written) and states:
  - the exit code (1 runtime: data, checkpoint, filesystem; 2 usage: flags),
  - two regexes for the one error line on stderr, what is wrong and what to do about it; that
    line is all of stderr, no traceback (rows marked `logs` fail after the command has logged
    progress: there it is the last line and the only error or warning),
  - that nothing was written or changed: every row works in its own directory (the working
    directory, so the commands read like a user's), hashed before and after the command.
Rows whose bad input is tolerated (unreadable files among good ones in an image folder)
expect exit 0 and state the warning instead.

The lower-level versions of many rows live in test_checkpoint.py, test_data.py, test_cli.py
and test_sampling.py; this file is the user-level view, one row per case. Commands run
in-process (CliRunner keeps stderr apart from stdout), so the whole table takes seconds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import struct
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_idx_dataset, make_image, make_image_folder
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from safetensors.torch import save_file
from typer.testing import CliRunner

from genai_cli import checkpoint as ck
from genai_cli import console, export, fileio
from genai_cli.cli import app

TINY = {"width": "8", "image_size": "16", "batch_size": "8", "steps": "1", "log_every": "1"}  # tiny models only
FASHION = ("--data", "fashion-mnist", "--data-dir", "datasets")  # after the `fashion` setup
BIG_FILE = 64 << 20  # snapshot files above this by size and mtime instead of hashing them (sparse files)
ALLOCATION_LIMIT = 32 << 20  # a command refusing a huge header must not allocate anywhere near it
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def train(data: Sequence[str], **flags: str) -> tuple[str, ...]:
    """`genai train` on `data` with the tiny-model flags; `flags` replace them or add to them."""
    merged = {**TINY, **flags}
    return ("train", *data, *(arg for key, value in merged.items() for arg in ("--" + key.replace("_", "-"), value)))


def train_pics(**flags: str) -> tuple[str, ...]:
    """`genai train --data pics`: an image folder of a few images, so batches of 4."""
    return train(("--data", "pics"), **{"batch_size": "4", **flags})


@dataclass
class Ctx:
    """What a row's setup works with: its own directory (also the working directory)."""

    tmp: Path
    runs: dict[str, Path]  # the session's tiny trained runs; copied, never touched
    monkeypatch: pytest.MonkeyPatch
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    before: dict[str, str] = field(default_factory=dict)  # the snapshot taken after setup


Setup = Callable[[Ctx], None]
Check = Callable[[Ctx], None]


@dataclass(frozen=True)
class Case:
    id: str
    setup: tuple[Setup, ...]
    argv: tuple[str, ...]
    code: int
    problem: str  # regex the message must match: what is wrong
    fix: str | None  # regex the message must match: what to do (None: a warning on success)
    writes: bool = False  # the command may write files (a run): `check` says what must hold instead
    logs: bool = False  # the command logs progress (on stderr) before it meets the problem
    check: Check | None = None  # an extra check after the command
    root_skip: bool = False  # relies on file permissions, which root ignores
    needs_no_cuda: bool = False


# ---------------------------------------------------------------- setups: runs and data


def dcgan_run(ctx: Ctx) -> None:
    """run/: a copy of the session's tiny dcgan run."""
    shutil.copytree(ctx.runs["dcgan"], ctx.tmp / "run", symlinks=True)


def cgan_run(ctx: Ctx) -> None:
    """cgan-run/: a copy of the session's tiny cgan run."""
    shutil.copytree(ctx.runs["cgan"], ctx.tmp / "cgan-run", symlinks=True)


def pix2pix_run(ctx: Ctx) -> None:
    """p2p-run/: a copy of the session's tiny pix2pix run (edges of FashionMNIST)."""
    shutil.copytree(ctx.runs["pix2pix"], ctx.tmp / "p2p-run", symlinks=True)


def paired_folders(name: str, drop: str | None = None, resize: str | None = None) -> Setup:
    """NAME/A and NAME/B of four 20x20 pairs by name; `drop` deletes B/<drop>, `resize` makes B/<resize> 24x20."""
    def setup(ctx: Ctx) -> None:
        for side in ("A", "B"):
            make_image_folder(ctx.tmp / name / side, classes=(), n_per_class=4)
        if drop:
            (ctx.tmp / name / "B" / drop).unlink()
        if resize:
            make_image((24, 20)).save(ctx.tmp / name / "B" / resize)
    return setup


def fashion(ctx: Ctx) -> None:
    """datasets/: a tiny FashionMNIST root (64 train images)."""
    make_idx_dataset(ctx.tmp / "datasets")


def empty_dir(name: str) -> Setup:
    return lambda ctx: (ctx.tmp / name).mkdir(parents=True)


def a_file(name: str, data: bytes = b"precious") -> Setup:
    def setup(ctx: Ctx) -> None:
        (ctx.tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx.tmp / name).write_bytes(data)
    return setup


def read_only_dir(name: str) -> Setup:
    def setup(ctx: Ctx) -> None:
        (ctx.tmp / name).mkdir()
        (ctx.tmp / name).chmod(0o500)
        ctx.cleanups.append(lambda: (ctx.tmp / name).chmod(0o700))
    return setup


def dangling_latest(ctx: Ctx) -> None:
    (ctx.tmp / "runs").mkdir()
    (ctx.tmp / "runs" / "latest").symlink_to("dcgan-fashion-mnist-007", target_is_directory=True)


def stdout_is_a_terminal(ctx: Ctx) -> None:
    ctx.monkeypatch.setattr(console, "stdout_is_terminal", lambda: True)


def no_unpickling(ctx: Ctx) -> None:
    """A pickle must never be loaded: any attempt fails the row."""
    def refuse(*args, **kwargs):
        raise AssertionError("genai tried to unpickle a file")
    for owner, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        ctx.monkeypatch.setattr(owner, name, refuse)


def trace_allocations(ctx: Ctx) -> None:
    tracemalloc.start()
    ctx.cleanups.append(tracemalloc.stop)


def full_disk(only: Callable[[bytes], bool] = lambda data: True) -> Setup:
    """The low-level write of every atomic write (or of those `only` picks) fails with ENOSPC."""
    def setup(ctx: Ctx) -> None:
        real = fileio._write_synced

        def write(fd: int, data: bytes) -> None:
            if not only(data):
                return real(fd, data)
            os.close(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        ctx.monkeypatch.setattr(fileio, "_write_synced", write)
    return setup


def is_safetensors(data: bytes) -> bool:
    return len(data) > 8 and b'"__metadata__"' in data[8 : 8 + header_length(data)]


def image_folder(name: str, n: int = 6, **kwargs) -> Setup:
    return lambda ctx: make_image_folder(ctx.tmp / name, n_per_class=n, **kwargs)


def truncated_image(name: str, fmt: str) -> Setup:
    """One image cut in half, beside good ones: PIL reads its header but cannot decode it."""
    def setup(ctx: Ctx) -> None:
        path = ctx.tmp / name
        make_image(20, "RGB", seed=99).save(path, format=fmt)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return setup


def mixed_images(name: str) -> Setup:
    """Every mode a folder may hold, each at its own size (square or not)."""
    def setup(ctx: Ctx) -> None:
        folder = ctx.tmp / name
        folder.mkdir()
        for i, (mode, size) in enumerate([("L", 12), ("RGBA", 20), ("P", (24, 16)), ("I;16", 18), ("RGB", (16, 30)),
                                          ("L", 40)]):
            make_image(size, mode, seed=i).save(folder / f"img{i}.png")
    return setup


def non_image_files(name: str) -> Setup:
    def setup(ctx: Ctx) -> None:
        folder = ctx.tmp / name
        (folder / "notes.txt").write_text("not an image")
        (folder / "labels.csv").write_text("file,label\n")
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "nested").mkdir()
        (folder / "nested" / "README").write_text("hello")  # a sub-folder without images: not a class
    return setup


def fifo(name: str) -> Setup:
    """A named pipe at `name` (nobody ever writes to it: opening it to read blocks forever)."""
    def setup(ctx: Ctx) -> None:
        (ctx.tmp / name).unlink(missing_ok=True)
        os.mkfifo(ctx.tmp / name)
        hang_guard(ctx)
    return setup


class Hang(BaseException):
    """Raised by SIGALRM in a row that would otherwise block forever (a BaseException: no `except Exception` hides it)."""


def hang_guard(ctx: Ctx, seconds: float = 120) -> None:
    """A row that would block forever (reading a FIFO) fails after `seconds` instead of hanging the suite."""
    def hang(signum, frame):
        raise Hang(f"the command blocked for {seconds} s")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    ctx.cleanups.append(lambda: (signal.setitimer(signal.ITIMER_REAL, 0), signal.signal(signal.SIGALRM, previous)))


def signal_during(owner: object, name: str, signum: int, after: bool = True) -> Setup:
    """`owner.name` sends `signum` to this process (after doing its work, or before): a signal in mid-command.
    Without a genai handler SIGTERM would kill the test process, so that case fails the row instead."""
    def setup(ctx: Ctx) -> None:
        real = getattr(owner, name)
        if signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN:
            # pytest started by a background shell (`cmd &`) inherits an ignored SIGINT, which genai rightly
            # keeps; a user at a terminal has Python's KeyboardInterrupt handler, the case this row checks
            previous = signal.signal(signum, signal.default_int_handler)
            ctx.cleanups.append(lambda: signal.signal(signum, previous))

        def signalled(*args, **kwargs):
            assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None), \
                f"genai has no {signal.Signals(signum).name} handler: the process would die without cleaning up"
            result = real(*args, **kwargs) if after else None
            os.kill(os.getpid(), signum)
            return result if after else real(*args, **kwargs)
        ctx.monkeypatch.setattr(owner, name, signalled)
    return setup


CONTROL_CLASS = "\x1b[2J\nboom"  # clears the terminal and starts a line of its own when printed raw


def cgan_with_control_characters(ctx: Ctx) -> None:
    """cgan-run/ whose first class name holds a terminal escape sequence and a newline."""
    cgan_run(ctx)
    path = ctx.tmp / "cgan-run" / ck.MODEL_FILE
    meta, _, _ = ck.read_header(path)
    config = json.loads(meta["genai.config"])
    config["data"]["classes"][0] = CONTROL_CLASS
    meta["genai.config"], meta["genai.classes"] = json.dumps(config), json.dumps(config["data"]["classes"])
    path.write_bytes(save_tensors(load_tensors(path.read_bytes()), metadata=meta))


# ---------------------------------------------------------------- setups: damaged checkpoints


def header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


Damage = Callable[[Path, Path], None]  # (an intact genai file, where to write the damaged one)


def empty(src: Path, dest: Path) -> None:
    dest.write_bytes(b"")


def truncated(where: str) -> Damage:
    def damage(src: Path, dest: Path) -> None:
        data = src.read_bytes()
        n = header_length(data)
        cut = {"length": 5, "header": 8 + n // 2, "data": 8 + n + (len(data) - 8 - n) // 2}[where]
        dest.write_bytes(data[:cut])
    return damage


def random_bytes(src: Path, dest: Path) -> None:
    dest.write_bytes(np.random.default_rng(5).bytes(4096))


def foreign(src: Path, dest: Path) -> None:
    save_file({"weight": torch.zeros(2, 2)}, str(dest))


def huge_header(src: Path, dest: Path) -> None:
    dest.write_bytes(struct.pack("<Q", 2**62) + b"{}" + b" " * 54)


def huge_header_in_a_huge_file(src: Path, dest: Path) -> None:
    """A 1 GiB header claim inside a (sparse) file big enough to hold it: only the cap stops it."""
    with dest.open("wb") as handle:
        handle.write(struct.pack("<Q", 1 << 30) + b'{"a":')
        handle.truncate((1 << 30) + 4096)


def pickled(src: Path, dest: Path) -> None:
    dest.write_bytes(pickle.dumps({"generator.weight": [0.0] * 16, "step": 3}))


def directory(src: Path, dest: Path) -> None:
    dest.mkdir()


def named_pipe(src: Path, dest: Path) -> None:
    os.mkfifo(dest)


def device_link(src: Path, dest: Path) -> None:
    dest.symlink_to("/dev/zero")  # endless zeros


def edited(metadata: Callable[[dict], None] | None = None, tensors: Callable[[dict], None] | None = None) -> Damage:
    """The intact file re-saved with its metadata or tensors changed."""
    def damage(src: Path, dest: Path) -> None:
        meta, _, _ = ck.read_header(src)
        weights = load_tensors(src.read_bytes())
        if metadata:
            metadata(meta)
        if tensors:
            tensors(weights)
        dest.write_bytes(save_tensors(weights, metadata=meta))
    return damage


def drop_config(meta: dict) -> None:
    del meta["genai.config"]


def config_not_json(meta: dict) -> None:
    meta["genai.config"] = meta["genai.config"][:40]


def config_wrong_type(meta: dict) -> None:
    config = json.loads(meta["genai.config"])
    config["model"]["width"] = "eight"
    meta["genai.config"] = json.dumps(config)


def generator_weight(tensors: dict) -> str:
    return next(k for k in sorted(tensors) if k.removeprefix("model.").startswith("generator.") and tensors[k].ndim >= 2)


def wrong_shape(tensors: dict) -> None:
    key = generator_weight(tensors)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])


def wrong_dtype(tensors: dict) -> None:
    key = generator_weight(tensors)
    tensors[key] = tensors[key].double()


def damaged(damage: Damage, file: str) -> Setup:
    """run/ (a copy of the dcgan run) with `file` (model or training state) damaged."""
    def setup(ctx: Ctx) -> None:
        dcgan_run(ctx)
        dest = ctx.tmp / "run" / file
        dest.unlink()
        damage(ctx.runs["dcgan"] / file, dest)
    return setup


# ---------------------------------------------------------------- extra checks


def small_peak(ctx: Ctx) -> None:
    _, peak = tracemalloc.get_traced_memory()
    assert peak < ALLOCATION_LIMIT, f"allocated {peak} bytes for a file it refused"


def checkpoint_unchanged(ctx: Ctx) -> None:
    """A resumed run whose checkpoint write hit a full disk keeps the previous checkpoint, whole."""
    for name in (ck.MODEL_FILE, ck.STATE_FILE):
        assert sha256(ctx.tmp / "run" / name) == sha256(ctx.runs["dcgan"] / name), name


def model_card_escaped(path: Path) -> None:
    card = path.read_text()
    assert "\\x1b[2J\\nboom" in card and "\x1b" not in card, card


def run_written(ctx: Ctx) -> None:
    assert (ctx.tmp / "runs" / "latest" / ck.MODEL_FILE).is_file(), "the run was not written"


# ---------------------------------------------------------------- the catalogue

P = r"(?:\S*/)?"  # messages name paths as given; rows match the file name
CKPT_FIX = r"use an intact checkpoint|re-save it or use an earlier checkpoint|use a model\.safetensors written by"
# Each damaged file is run through the three commands that read checkpoints.
DAMAGED = [
    # id, damage, problem, fix, which commands (s: sample, i: info, r: train --resume)
    ("empty-file", empty, r"not a checkpoint \(0 bytes", CKPT_FIX, "sir"),
    ("truncated-in-length", truncated("length"), r"not a checkpoint \(5 bytes, too short", CKPT_FIX, "sir"),
    ("truncated-in-header", truncated("header"), r"truncated or not a safetensors file \(header claims", CKPT_FIX,
     "sir"),
    ("truncated-in-data", truncated("data"), r"is truncated \(\d+ of \d+ data bytes\)", CKPT_FIX, "sir"),
    ("random-bytes", random_bytes, r"truncated or not a safetensors file \(header claims", CKPT_FIX, "sir"),
    ("foreign-safetensors", foreign, r"safetensors file but not a genai checkpoint", CKPT_FIX, "sir"),
    ("metadata-without-config", edited(metadata=drop_config), r"not a genai checkpoint \(no genai metadata\)",
     CKPT_FIX, "sir"),
    ("config-not-json", edited(metadata=config_not_json), r"unreadable genai config", CKPT_FIX, "sir"),
    ("config-wrong-type", edited(metadata=config_wrong_type), r"unreadable genai config .*width", CKPT_FIX, "sir"),
    ("tensor-wrong-shape", edited(tensors=wrong_shape), r"does not match its own config \(wrong shape or dtype",
     CKPT_FIX, "sr"),
    ("tensor-wrong-dtype", edited(tensors=wrong_dtype), r"does not match its own config \(wrong shape or dtype",
     CKPT_FIX, "sr"),
    ("huge-header-length", huge_header, r"header claims 4611686018427387904 bytes", CKPT_FIX, "sir"),
    ("huge-header-length-in-a-huge-sparse-file", huge_header_in_a_huge_file, r"header claims 1073741824 bytes", CKPT_FIX,
     "sir"),
    ("pickle-renamed", pickled, r"truncated or not a safetensors file \(header claims", CKPT_FIX, "sir"),
    ("directory-instead-of-file", directory, r"is a directory", r"pass a run directory or a \.safetensors file",
     "sir"),
    ("fifo-instead-of-file", named_pipe, r"is a FIFO \(named pipe\), not a regular file",
     r"pass a run directory or a \.safetensors file", "sirex"),
    ("device-instead-of-file", device_link, r"is a character device, not a regular file",
     r"pass a run directory or a \.safetensors file", "sirex"),
]
FOUND_AT_LOAD = {"tensor-wrong-shape", "tensor-wrong-dtype"}  # --resume has loaded (and logged) the dataset by then
COMMANDS = {
    "s": ("sample", ck.MODEL_FILE, ("sample", "--checkpoint", "run", "--out", "x.png")),
    "i": ("info", ck.MODEL_FILE, ("info", "run")),
    "r": ("resume", ck.STATE_FILE, ("train", "--resume", "run")),
    "e": ("eval", ck.MODEL_FILE, ("eval", "--checkpoint", "run")),
    "x": ("export", ck.MODEL_FILE, ("export", "--checkpoint", "run", "--out", "slim")),
}


def checkpoint_cases() -> list[Case]:
    cases = []
    for name, damage, problem, fix, commands in DAMAGED:
        for letter in commands:
            command, file, argv = COMMANDS[letter]
            setup: tuple[Setup, ...] = (damaged(damage, file),)
            if damage is pickled:
                setup += (no_unpickling,)
            check = None
            if damage in (huge_header, huge_header_in_a_huge_file):
                setup, check = setup + (trace_allocations,), small_peak
            if damage is named_pipe:
                setup += (hang_guard,)
            cases.append(Case(f"checkpoint/{name}/{command}", setup, argv, 1, P + re.escape(file) + " .*" + problem, fix,
                              check=check, logs=command == "resume" and name in FOUND_AT_LOAD))
    return cases


CASES: list[Case] = [
    *checkpoint_cases(),
    Case("checkpoint/missing-path/sample", (), ("sample", "--checkpoint", "nope", "--out", "x.png"), 1,
         r"checkpoint nope does not exist", r"pass a run directory or a model\.safetensors file"),
    Case("checkpoint/missing-path/info", (), ("info", "nope"), 1,
         r"checkpoint nope does not exist", r"pass a run directory or a model\.safetensors file"),
    Case("checkpoint/missing-path/resume", (), ("train", "--resume", "nope"), 1,
         r"nope has no training_state\.safetensors", r"--resume takes a run directory written by `genai train`"),
    Case("checkpoint/model-file-given-to-resume", (dcgan_run,), ("train", "--resume", "run/model.safetensors"), 1,
         r"run/model\.safetensors has no training_state\.safetensors",
         r"--resume takes a run directory written by `genai train`"),
    Case("checkpoint/training-state-given-to-sample", (dcgan_run,),
         ("sample", "--checkpoint", "run/training_state.safetensors", "--out", "x.png"), 1,
         r"training_state\.safetensors is a genai training-state file, not a model file",
         r"pass .*model\.safetensors|use .*model\.safetensors"),
    Case("checkpoint/other-model-kind-to-resume", (cgan_run,), ("train", "--resume", "cgan-run", "--model", "dcgan"),
         2, r"--model cannot change when resuming", r"start a new run instead"),
    # ------------------------------------------------------------ data
    Case("data/missing-dataset-offline", (empty_dir("datasets"),), train(("--data", "mnist", "--data-dir", "datasets")), 1,
         r"dataset mnist \(train split\) not found \(not downloaded: GENAI_OFFLINE is set\)",
         r"put train-images-idx3-ubyte\[\.gz\], train-labels-idx1-ubyte\[\.gz\] in datasets/MNIST/raw"),
    Case("data/misspelt-name", (fashion,), train(("--data", "fashion-mnits", "--data-dir", "datasets")), 2,
         r"unknown dataset 'fashion-mnits'", r"did you mean 'fashion-mnist'\?"),
    Case("data/empty-image-folder", (empty_dir("pics"),), train_pics(), 1,
         r"no images in pics or its sub-folders", r"add images there or point --data at another folder"),
    Case("data/only-unreadable-images", (empty_dir("pics"), truncated_image("pics/a.png", "PNG"),
                                         a_file("pics/b.jpg", b"not a jpeg")), train_pics(),
         1, r"none of the 2 image files in pics can be read \(b\.jpg, a\.png\)",
         r"replace them with readable images or point --data at another folder"),
    Case("data/one-truncated-png-among-good-ones", (image_folder("pics", classes=()), truncated_image("pics/bad.png", "PNG")),
         train_pics(), 0, r"^warning: skipped 1 unreadable image file\(s\): bad\.png$", None,
         writes=True, check=run_written),
    Case("data/one-truncated-jpeg-among-good-ones",
         (image_folder("pics", classes=(), ext="jpg"), truncated_image("pics/bad.jpg", "JPEG")),
         train_pics(), 0, r"^warning: skipped 1 unreadable image file\(s\): bad\.jpg$", None,
         writes=True, check=run_written),
    Case("data/mixed-sizes-and-modes-train-fine", (mixed_images("pics"),), train_pics(), 0,
         r"^$", None, writes=True, check=run_written),
    Case("data/non-image-files-are-ignored", (image_folder("pics", classes=()), non_image_files("pics")),
         train_pics(), 0, r"^$", None, writes=True, check=run_written),
    Case("data/class-folder-without-images", (image_folder("pics", n=4), empty_dir("pics/bird")),
         train_pics(), 0,
         r"^warning: ignoring class folder\(s\) without images in pics: bird$", None, writes=True,
         check=run_written),
    Case("data/cgan-on-unlabelled-folder", (image_folder("pics", classes=()),),
         train_pics(model="cgan"), 2,
         r"--model cgan needs labelled data but pics has no classes",
         r"use class sub-folders or an unconditional model", logs=True),
    Case("data/keep-best-on-unlabelled-folder", (image_folder("pics", classes=()),),
         train_pics(model="gan", keep="best"), 2,
         r"--keep best needs labelled data \(genai's classifier judges the samples\), and pics has no classes",
         r"use --keep last", logs=True),
    Case("flags/keep-best-for-a-vae", (fashion,), train(("--data", "fashion-mnist", "--data-dir", "datasets"),
                                                        model="vae", keep="best"), 2,
         r"--keep best needs a model whose samples genai judges \(gan, dcgan, cgan\), not negative ELBO",
         r"use --keep last", logs=True),
    Case("flags/likelihood-for-a-gan", (fashion,), train(("--data", "fashion-mnist", "--data-dir", "datasets"),
                                                         model="dcgan", likelihood="gaussian"), 2,
         r"--likelihood sets a VAE decoder's; --model dcgan has none", r"drop --likelihood", logs=True),
    Case("flags/prior-components-with-standard-prior", (fashion,),
         train(("--data", "fashion-mnist", "--data-dir", "datasets"), model="vae", prior="standard", prior_components="5"), 2,
         r"--prior-components sizes a fitted prior, and --model vae draws its latents from N\(0, I\) here",
         r"drop --prior-components", logs=True),
    Case("flags/prior-components-with-one-latent", (fashion,),
         train(("--data", "fashion-mnist", "--data-dir", "datasets"), model="vae", latent_dim="1"), 2,
         r"a fitted prior of several components needs --latent-dim 2 or more", r"add --prior-components 1", logs=True),
    Case("flags/prior-components-0", (fashion,),
         train(("--data", "fashion-mnist", "--data-dir", "datasets"), model="vae", prior_components="0"), 2,
         r"--prior-components must be at least 1, got 0", r"valid in \[1, 1000\]"),
    # ------------------------------------------------------------ flags
    Case("flags/sample-n-0", (dcgan_run,), ("sample", "--checkpoint", "run", "--n", "0", "--out", "x.png"), 2,
         r"--n must be at least 1, got 0", r"at least 1"),
    Case("flags/sample-n-negative", (dcgan_run,), ("sample", "--checkpoint", "run", "--n", "-3", "--out", "x.png"), 2,
         r"--n must be at least 1, got -3", r"at least 1"),
    Case("flags/train-batch-size-0", (fashion,), train(FASHION, batch_size="0"), 2,
         r"--batch-size must be at least 1, got 0", r"at least 1"),
    Case("flags/train-image-size-5", (fashion,), train(FASHION, image_size="5"), 2,
         r"--image-size 5 cannot be built by a conv model", r"use s \* 2\^k with s in 4\.\.7", logs=True),
    Case("flags/train-image-size-100000", (fashion,), train(FASHION, image_size="100000"), 2,
         r"image size must be between 1 and \d+ pixels, got 100000", r"choose an --image-size in that range"),
    # every value is checked before work starts: its range in one line, never an internal error or a silent change
    *[Case(f"flags/train-{flag}-{value}", (fashion,), train(FASHION, **{flag.replace("-", "_"): value}), 2,
           rf"--{flag} must be {problem}, got {re.escape(value)}", fix)
      for flag, value, problem, fix in [
          ("beta1", "1.5", r"in \[0, 1\)", r"in \[0, 1\)"),
          ("beta1", "nan", r"a finite number \(in \[0, 1\)\)", r"in \[0, 1\)"),
          ("beta1", "-0.1", r"at least 0", r"valid in \[0, 1\)"),
          ("ema", "nan", r"a finite number \(in \[0, 1\)\)", r"in \[0, 1\)"),
          ("ema", "1.0", r"in \[0, 1\)", r"in \[0, 1\)"),
          ("lr", "nan", r"a finite number \(in \(0, 1\)\)", r"in \(0, 1\)"),
          ("lr", "inf", r"a finite number \(in \(0, 1\)\)", r"in \(0, 1\)"),
          ("lr-d", "0.0", r"positive", r"valid in \(0, 1\)"),
          ("beta", "-1", r"at least 0", r"valid in \[0, 10000\]"),
          ("beta", "inf", r"a finite number \(in \[0, 10000\]\)", r"in \[0, 10000\]"),
          ("beta", "nan", r"a finite number \(in \[0, 10000\]\)", r"in \[0, 10000\]"),
          ("latent-dim", "0", r"at least 1", r"valid in \[1, 4096\]"),
          ("latent-dim", "1000000000", r"in \[1, 4096\]", r"in \[1, 4096\]"),
          ("width", "0", r"at least 1", r"valid in \[1, 1024\]"),
          ("width", "100000", r"in \[1, 1024\]", r"in \[1, 1024\]"),
          ("seed", str(2**64), r"in \[0, 18446744073709551615\]", r"in \[0, 18446744073709551615\]"),
          ("seed", "-1", r"at least 0", r"valid in \[0, 18446744073709551615\]"),
          ("save-every", "0", r"at least 1", r"at least 1"),
          ("log-every", "0", r"at least 1", r"at least 1"),
          ("batch-size", "1000000", r"in \[1, 65536\]", r"in \[1, 65536\]"),
      ]],
    Case("flags/train-nproc-per-node-0", (fashion,), train(FASHION, nproc_per_node="0"), 2,
         r"--nproc-per-node must be at least 1, got 0", r"valid in \[1, 1024\]"),
    Case("flags/train-nnodes-not-a-count", (fashion,), train(FASHION, nproc_per_node="2", nnodes="two"), 2,
         r"--nnodes 'two' is not a machine count", r"write N or MIN:MAX"),
    Case("flags/train-device-cpu-x", (fashion,), train(FASHION, device="cpu:x"), 2,
         r"--device 'cpu:x' is not a device", r"write cpu"),
    Case("flags/sample-device-cuda-x", (dcgan_run,), ("sample", "--checkpoint", "run", "--device", "cuda:x", "--out", "x.png"),
         2, r"--device 'cuda:x' is not a device", r"write cuda or cuda:N"),
    Case("flags/sample-seed-negative", (dcgan_run,), ("sample", "--checkpoint", "run", "--seed", "-1", "--out", "x.png"), 2,
         r"--seed must be at least 0, got -1", r"valid in \[0, 18446744073709551615\]"),
    *[Case(f"flags/{command}-{flag.strip('-')}-empty", setup, argv, 2, rf"{flag} is empty", r"give a path, or leave the flag out")
      for command, flag, setup, argv in [
          ("train", "--out", (fashion,), train(FASHION, out="")),
          ("train", "--data", (fashion,), train(("--data", ""))),
          ("train", "--resume", (dcgan_run,), ("train", "--resume", "")),
          ("sample", "--out", (dcgan_run,), ("sample", "--checkpoint", "run", "--out", "")),
          ("sample", "--checkpoint", (dcgan_run,), ("sample", "--checkpoint", "", "--out", "x.png")),
          ("export", "--out", (dcgan_run,), ("export", "--checkpoint", "run", "--out", "")),
          ("eval", "--checkpoint", (dcgan_run,), ("eval", "--checkpoint", "")),
          ("eval", "--images", (dcgan_run,), ("eval", "--images", "", "--data", "fashion-mnist")),
          ("eval", "--data", (dcgan_run,), ("eval", "--checkpoint", "run", "--data", "")),
          ("info", "PATH", (dcgan_run,), ("info", "")),
      ]],
    Case("flags/eval-n-1", (dcgan_run,), ("eval", "--checkpoint", "run", "--n", "1"), 2,
         r"--n must be at least 2, got 1", r"at least 2"),
    Case("flags/eval-iw-samples-0", (dcgan_run,), ("eval", "--checkpoint", "run", "--iw-samples", "0"), 2,
         r"--iw-samples must be at least 1, got 0", r"valid in \[1, 100000\]"),
    Case("flags/eval-iw-samples-negative", (dcgan_run,), ("eval", "--checkpoint", "run", "--iw-samples", "-5"), 2,
         r"--iw-samples must be at least 1, got -5", r"valid in \[1, 100000\]"),
    Case("flags/eval-seed-range-past-the-last-seed", (dcgan_run,),
         ("eval", "--checkpoint", "run", "--n", "10", "--seed", str(2**64 - 5)), 2,
         r"--seed must be in \[0, 18446744073709551615\], got 18446744073709551620", r"in \[0, "),
    # ------------------------------------------------------------ eval gates: one that cannot be computed never passes
    *[Case(f"flags/eval-gate-{name}", (run_setup,), ("eval", "--checkpoint", run_dir, *extra, "--fail-if", gate), 2, problem, fix)
      for name, run_setup, run_dir, extra, gate, problem, fix in [
          ("elbo-on-a-gan", dcgan_run, "run", (), "elbo<3", r"--fail-if elbo<3: elbo never applies when scoring a dcgan",
           r"needs a VAE \(vae, cvae\): remove the gate"),
          ("acc-on-an-unconditional-model", dcgan_run, "run", (), "acc<0.9", r"acc never applies when scoring a dcgan",
           r"needs a conditional model \(cgan, cvae\): remove the gate"),
          ("intra-fid-on-an-unconditional-model", dcgan_run, "run", (), "intra_fid>30", r"intra_fid never applies",
           r"needs a conditional model"),
          ("metric-left-out-of-metrics", cgan_run, "cgan-run", ("--metrics", "fid"), "kid>1",
           r"kid is not computed with --metrics fid", r"add kid to --metrics or remove the gate"),
          ("unknown-metric", dcgan_run, "run", (), "fidd>3", r"unknown metric 'fidd'", r"choose from: fid, kid"),
          ("threshold-not-a-number", dcgan_run, "run", (), "fid>1.2.3", r"'fid>1\.2\.3' is not a gate",
           r"a finite number, e\.g\. \"fid>30\""),
          ("threshold-infinite", dcgan_run, "run", (), "fid<1e999", r"'fid<1e999' is not a gate", r"a finite number"),
      ]],
    # ------------------------------------------------------------ class-based metrics need the model's classes
    Case("eval/reference-with-other-classes", (cgan_run, image_folder("pics")), ("eval", "--checkpoint", "cgan-run", "--data", "pics"),
         2, r"--data pics has 2 classes \(cat, dog\) but the model was trained on 10 \(T-shirt/top, Trouser, Pullover, \.\.\.\)",
         r"use its dataset, or ask only for class-free metrics with --metrics fid,kid,is,pr,dc", logs=True),
    Case("eval/reference-with-other-classes-asked-for-acc", (cgan_run, image_folder("pics")),
         ("eval", "--checkpoint", "cgan-run", "--data", "pics", "--metrics", "acc"), 2,
         r"has 2 classes .* trained on 10", r"--metrics fid,kid,is,pr,dc", logs=True),
    # ------------------------------------------------------------ pix2pix: pairs, and images where latents go (or back)
    Case("pix2pix/unpaired-folders", (paired_folders("ab", drop="img002.png"),),
         train(("--model", "pix2pix", "--data", "ab"), batch_size="2"), 2,
         r"ab/A/img002\.png has no partner in ab/B", r"pair by name; add ab/B/img002\.png or remove it", logs=True),
    Case("pix2pix/pair-size-mismatch", (paired_folders("ab", resize="img001.png"),),
         train(("--model", "pix2pix", "--data", "ab"), batch_size="2"), 2,
         r"img001\.png is 20x20 but its partner ab/B/img001\.png is 24x20", r"the same size: resize one of them", logs=True),
    Case("pix2pix/not-side-by-side", (image_folder("pics", classes=()),),
         train(("--model", "pix2pix", "--data", "pics"), batch_size="2"), 2,
         r"img000\.png is 20x20, not two squares side by side", r"use A/ and B/ folders for pairs", logs=True),
    Case("pix2pix/pairs-on-a-noise-model", (fashion,), train(FASHION, pairs="edges"), 2,
         r"--pairs and --direction give pairs of images to a model that translates them", r"drop them"),
    Case("pix2pix/latent-dim", (fashion,), train(FASHION, model="pix2pix", latent_dim="64"), 2,
         r"--latent-dim does not apply to --model pix2pix: it translates images", r"drop --latent-dim", logs=True),
    Case("pix2pix/unknown-pairs", (fashion,), train(FASHION, model="pix2pix", pairs="sketch"), 2,
         r"unknown --pairs 'sketch'", r"choose one of: folder, edges, masked, downsampled$"),
    Case("pix2pix/seeds-on-pix2pix", (pix2pix_run, image_folder("pics", classes=())),
         ("sample", "--checkpoint", "p2p-run", "--input", "pics", "--seeds", "0-3", "--out", "x.png"), 2,
         r"--seeds chooses latents, but a pix2pix model translates images", r"give the images with --input"),
    Case("pix2pix/label-on-pix2pix", (pix2pix_run, image_folder("pics", classes=())),
         ("sample", "--checkpoint", "p2p-run", "--input", "pics", "--label", "1", "--out", "x.png"), 2,
         r"--label chooses latents", r"drop it and give the images with --input"),
    Case("pix2pix/no-input", (pix2pix_run,), ("sample", "--checkpoint", "p2p-run", "--out", "x.png"), 2,
         r"this pix2pix model translates images", r"give them with --input"),
    Case("pix2pix/input-on-a-noise-model", (dcgan_run, image_folder("pics", classes=())),
         ("sample", "--checkpoint", "run", "--input", "pics", "--out", "x.png"), 2,
         r"--input gives images to a model that translates them \(pix2pix\); this dcgan samples from noise", r"drop --input"),
    Case("pix2pix/eval-metric-of-noise-models", (pix2pix_run,), ("eval", "--checkpoint", "p2p-run", "--metrics", "kid"), 2,
         r"metric 'kid' does not apply here", r"a translating model has fid and paired"),
    # ------------------------------------------------------------ resources: refused up front, with the estimate and the limit
    *[Case(f"resources/{name}", (dcgan_run,), argv, 2, problem + r" need about [\d.]+ GiB of memory, above the [\d.]+ GiB usable here",
           fix) for name, argv, problem, fix in [
          ("sample-a-billion-into-a-grid", ("sample", "--checkpoint", "run", "--n", "1000000000", "--out", "x.png"),
           r"1000000000 images held at once for x\.png", r"write them to a folder \(--out DIR/"),
          ("sample-a-billion-to-stdout", ("sample", "--checkpoint", "run", "--n", "1000000000", "--out", "x.npz"),
           r"1000000000 images held at once for x\.npz", r"or ask for fewer"),
          ("sample-seeds-0-99999999", ("sample", "--checkpoint", "run", "--seeds", "0-99999999", "--out", "x.png"),
           r"100000000 images held at once for x\.png", r"write them to a folder"),
          ("sample-interpolate-10-million-steps",
           ("sample", "--checkpoint", "run", "--interpolate", "0", "1", "--frames", "100000000", "--out", "x.png"),
           r"100000000 images held at once for x\.png", r"write them to a folder"),
          ("eval-a-billion", ("eval", "--checkpoint", "run", "--n", "1000000000"),
           r"1000000000 generated images with their features", r"use a smaller --n"),
      ]],
    Case("resources/train-image-size-1024", (fashion,), train(FASHION, image_size="1024", width="64", batch_size="64"), 2,
         r"training steps of 64 images of 1024x1024 at --width 64 need about [\d.]+ GiB of memory",
         r"use a smaller --batch-size, --width or --image-size", logs=True),
    Case("flags/label-out-of-range", (cgan_run,), ("sample", "--checkpoint", "cgan-run", "--label", "10", "--out", "x.png"),
         2, r"--label '10' is not a class of this model", r"choose one of: 0=T-shirt/top, .*9=Ankle boot"),
    Case("flags/label-on-unconditional-model", (dcgan_run,),
         ("sample", "--checkpoint", "run", "--label", "3", "--out", "x.png"), 2,
         r"this checkpoint is a dcgan", r"--label needs a conditional model \(cgan, cvae\)"),
    Case("flags/seeds-backwards", (dcgan_run,), ("sample", "--checkpoint", "run", "--seeds", "5-2", "--out", "x.png"), 2,
         r"--seeds range 5-2 runs backwards", r"write 2-5"),
    # parse errors (Typer's own checks) read like the rest: the flag, the problem, the fix, in one line
    Case("flags/sample-interpolate-one-seed", (dcgan_run,),
         ("sample", "--checkpoint", "run", "--interpolate", "3", "--frames", "10", "--out", "x.png"), 2,
         r"--interpolate takes 2 values, A B", r"but --frames came before all of them were given"),
    Case("flags/sample-n-not-a-number", (dcgan_run,), ("sample", "--checkpoint", "run", "--n", "many", "--out", "x.png"), 2,
         r"--n takes a whole number", r"got 'many'"),
    Case("flags/train-unknown-model", (fashion,), train(FASHION, model="dcgna"), 2,
         r"unknown --model 'dcgna'", r"did you mean 'dcgan'\? choose one of: gan, dcgan, cgan, vae, cvae, pix2pix"),
    Case("flags/train-misspelt-flag", (fashion,), (*train(FASHION), "--lr-dacay-start", "0.5"), 2,
         r"unknown option --lr-dacay-start", r"did you mean --lr-decay-start\?"),
    Case("flags/sample-flag-given-a-value", (dcgan_run,), ("sample", "--checkpoint", "run", "--force", "true"), 2,
         r"unexpected argument 'true'", r"write --force, not --force true"),
    Case("flags/sample-trunc-above-1", (dcgan_run,), ("sample", "--checkpoint", "run", "--trunc", "1.5", "--out", "x.png"),
         2, r"--trunc must be in \[0, 1\], got 1.5", r"in \[0, 1\]"),
    Case("flags/sample-gif-without-a-walk", (dcgan_run,), ("sample", "--checkpoint", "run", "--out", "x.gif"), 2,
         r"a \.gif animates a walk", r"add --interpolate A B, or write a \.png grid"),
    Case("pix2pix/trunc-on-pix2pix", (pix2pix_run, image_folder("pics", classes=())),
         ("sample", "--checkpoint", "p2p-run", "--input", "pics", "--trunc", "0.5", "--out", "x.png"), 2,
         r"--trunc chooses latents", r"drop it and give the images with --input"),
    Case("flags/unknown-device", (dcgan_run,), ("sample", "--checkpoint", "run", "--device", "tpu", "--out", "x.png"), 2,
         r"unknown --device 'tpu'", r"choose one of: auto, cpu, cuda, mps"),
    Case("flags/sample-device-cuda-without-cuda", (dcgan_run,),
         ("sample", "--checkpoint", "run", "--device", "cuda", "--out", "x.png"), 2,
         r"--device cuda was asked for but CUDA is not available", r"use --device cpu or auto", needs_no_cuda=True),
    Case("flags/train-device-cuda-without-cuda", (fashion,), train(FASHION, device="cuda"), 2,
         r"--device cuda was asked for but CUDA is not available", r"use --device cpu or auto", needs_no_cuda=True),
    Case("flags/png-to-a-terminal", (dcgan_run, stdout_is_a_terminal), ("sample", "--checkpoint", "run", "--out", "-"), 2,
         r"--out - writes PNG bytes to stdout, which is a terminal", r"pipe it or redirect it to a file"),
    # ------------------------------------------------------------ filesystem
    Case("fs/sample-into-read-only-folder", (dcgan_run, read_only_dir("ro")),
         ("sample", "--checkpoint", "run", "--out", "ro/x.png"), 1,
         r"cannot write ro/x\.png: Permission denied", r"choose a writable --out", root_skip=True),
    Case("fs/train-into-read-only-folder", (fashion, read_only_dir("ro")), train(FASHION, out="ro/run"), 1,
         r"cannot (?:write|create run directory) ro/run: Permission denied", r"choose a writable --out", root_skip=True,
         logs=True),
    Case("fs/export-into-read-only-folder", (dcgan_run, read_only_dir("ro")),
         ("export", "--checkpoint", "run", "--out", "ro/slim"), 1,
         r"cannot write ro/slim: Permission denied", r"choose a writable --out", root_skip=True),
    Case("fs/sample-under-a-file", (dcgan_run, a_file("notes")), ("sample", "--checkpoint", "run", "--out", "notes/x.png"),
         1, r"cannot write notes/x\.png: notes is a file, not a folder", r"choose a writable --out"),
    Case("fs/train-under-a-file", (fashion, a_file("notes")), train(FASHION, out="notes/run"), 1,
         r"cannot (?:write|create run directory) notes/run: notes is a file, not a folder", r"choose a writable --out",
         logs=True),
    Case("fs/export-under-a-file", (dcgan_run, a_file("notes")), ("export", "--checkpoint", "run", "--out", "notes/slim"),
         1, r"cannot write notes/slim: notes is a file, not a folder", r"choose a writable --out"),
    Case("fs/sample-png-exists", (dcgan_run, a_file("x.png")), ("sample", "--checkpoint", "run", "--out", "x.png"), 2,
         r"x\.png already exists", r"pass --force to overwrite it or choose another --out"),
    Case("fs/sample-folder-not-empty", (dcgan_run, a_file("imgs/notes.txt")),
         ("sample", "--checkpoint", "run", "--out", "imgs"), 2,
         r"imgs already exists", r"pass --force to overwrite it or choose another --out"),
    Case("fs/export-out-exists", (dcgan_run, a_file("slim/keep.txt")), ("export", "--checkpoint", "run", "--out", "slim"),
         2, r"slim already exists", r"pass --force to overwrite it or choose another --out"),
    Case("fs/train-into-an-existing-run", (fashion, dcgan_run), train(FASHION, out="run"), 2,
         r"run already holds a run", r"continue it with --resume run\b.* or choose another --out", logs=True),
    Case("fs/disk-full-writing-a-sample", (dcgan_run, a_file("x.png"), full_disk()),
         ("sample", "--checkpoint", "run", "--out", "x.png", "--force"), 1,
         r"cannot write x\.png: No space left on device",
         r"free disk space and run again \(the previous file, if any, is unchanged\)"),
    Case("fs/disk-full-writing-a-checkpoint", (dcgan_run, full_disk(is_safetensors)),
         ("train", "--resume", "run", "--steps", "4"), 1,
         r"cannot write run/training_state\.safetensors: No space left on device",
         r"free disk space and run again \(the previous file, if any, is unchanged\)", writes=True,
         check=checkpoint_unchanged, logs=True),
    Case("fs/disk-full-writing-an-export", (dcgan_run, a_file("slim/keep.txt"), full_disk()),
         ("export", "--checkpoint", "run", "--out", "slim", "--force"), 1,
         r"cannot write slim/model\.safetensors: No space left on device",
         r"free disk space and run again \(the previous file, if any, is unchanged\)"),
    Case("fs/fifo-as-inception-weights", (dcgan_run, fifo("w.pt")),
         ("eval", "--checkpoint", "run", "--features", "inception", "--inception-weights", "w.pt"), 2,
         r"w\.pt is a FIFO \(named pipe\), not a regular file", r"pass the Inception weights file itself"),
    Case("fs/fifo-as-dataset-file", (fashion, fifo("datasets/FashionMNIST/raw/train-labels-idx1-ubyte")),
         train(FASHION), 1, r"train-labels-idx1-ubyte is a FIFO \(named pipe\), not a regular file",
         r"replace it with the dataset file"),
    Case("fs/fifo-as-metrics-log/train", (fashion, empty_dir("run"), fifo("run/metrics.jsonl")), train(FASHION, out="run"),
         2, r"run is not empty and holds no genai run \(metrics\.jsonl\)", r"choose a new or empty --out, or pass --force", logs=True),
    Case("fs/fifo-as-metrics-log/resume", (dcgan_run, fifo("run/metrics.jsonl")), ("train", "--resume", "run", "--steps", "4"),
         1, r"run/metrics\.jsonl is a FIFO \(named pipe\), not a regular file", r"remove it so genai can keep its log there",
         logs=True),
    # ------------------------------------------------------------ signals: every command cleans up on SIGINT and SIGTERM
    Case("signal/sigterm-during-export-check", (dcgan_run, a_file("slim/keep.txt"),
                                                signal_during(export, "max_abs_diffs", signal.SIGTERM)),
         ("export", "--checkpoint", "run", "--out", "slim", "--force"), 143, r"^error: terminated \(SIGTERM\)$", None),
    Case("signal/sigint-during-export-check", (dcgan_run, a_file("slim/keep.txt"),
                                               signal_during(export, "max_abs_diffs", signal.SIGINT)),
         ("export", "--checkpoint", "run", "--out", "slim", "--force"), 130, r"^error: interrupted$", None),
    Case("signal/sigterm-while-writing-an-export", (dcgan_run, signal_during(fileio, "_write_synced", signal.SIGTERM)),
         ("export", "--checkpoint", "run", "--out", "g.pt2"), 143, r"^error: terminated \(SIGTERM\)$", None),
    Case("signal/sigterm-while-writing-a-sample", (dcgan_run, a_file("x.png"),
                                                   signal_during(fileio, "_write_synced", signal.SIGTERM)),
         ("sample", "--checkpoint", "run", "--out", "x.png", "--force"), 143, r"^error: terminated \(SIGTERM\)$", None),
    Case("signal/sigterm-while-writing-a-sample-folder", (dcgan_run, signal_during(fileio, "_write_synced", signal.SIGTERM)),
         ("sample", "--checkpoint", "run", "--out", "imgs", "--n", "3"), 143, r"^error: terminated \(SIGTERM\)$", None,
         writes=True),
    Case("signal/sigterm-while-writing-eval-features", (dcgan_run, signal_during(fileio, "_write_synced", signal.SIGTERM)),
         ("eval", "--checkpoint", "run", "--n", "10"), 143, r"^error: terminated \(SIGTERM\)$", None, writes=True,
         logs=True),
    # ------------------------------------------------------------ strings from files are data, never terminal commands
    Case("terminal/control-characters-in-a-class-name", (cgan_with_control_characters,),
         ("sample", "--checkpoint", "cgan-run", "--label", "nope", "--out", "x.png"), 2,
         r"--label 'nope' is not a class of this model", r"choose one of: 0=\\x1b\[2J\\nboom, 1=Trouser"),
    Case("terminal/control-characters-in-a-path", (), ("sample", "--checkpoint", "no\x1b[2J\npe", "--out", "x.png"), 1,
         r"checkpoint no\\x1b\[2J\\npe does not exist", r"pass a run directory or a model\.safetensors file"),
    Case("terminal/control-characters-in-a-class-folder", (image_folder("pics", n=4), empty_dir("pics/\x1b[2Jbird")),
         train_pics(), 0, r"^warning: ignoring class folder\(s\) without images in pics: \\x1b\[2Jbird$", None,
         writes=True, check=run_written),
    Case("terminal/control-characters-in-the-model-card", (cgan_with_control_characters,),
         ("export", "--checkpoint", "cgan-run", "--out", "slim"), 0, r"^$", None, writes=True,
         check=lambda ctx: model_card_escaped(ctx.tmp / "slim" / "README.md")),
    Case("fs/latest-points-nowhere/sample", (dangling_latest,), ("sample", "--out", "x.png"), 1,
         r"no checkpoint given and the runs/latest link points nowhere",
         r"train one with `genai train` or pass --checkpoint"),
    Case("fs/latest-points-nowhere/info", (dangling_latest,), ("info",), 1,
         r"no checkpoint given and the runs/latest link points nowhere",
         r"train one with `genai train` or pass --checkpoint"),
    Case("fs/latest-points-nowhere/export", (dangling_latest,), ("export", "--out", "slim"), 1,
         r"no checkpoint given and the runs/latest link points nowhere",
         r"train one with `genai train` or pass --checkpoint"),
]


# ---------------------------------------------------------------- running a row


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones too) with its content hash, link target or 'dir'."""
    state = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            state[name] = "-> " + os.readlink(path)
        elif path.is_dir():
            state[name] = "dir"
        elif not path.is_file():  # a FIFO or device: reading it would block
            state[name] = "special"
        elif path.stat().st_size > BIG_FILE:
            state[name] = f"{path.stat().st_size} bytes, mtime {path.stat().st_mtime_ns}"
        else:
            state[name] = sha256(path)
    return state


def assert_no_temp_files(root: Path) -> None:
    leftovers = [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".export"))]
    assert not leftovers, leftovers




def run_case(case: Case, ctx: Ctx):
    """Set the row up in ctx.tmp (the working directory), snapshot it, run the command."""
    for setup in case.setup:
        setup(ctx)
    ctx.before = snapshot(ctx.tmp)
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()
    return CliRunner().invoke(app, list(case.argv))


def message_of(case: Case, result) -> str:
    """The line the row is about: the error line, or the warning (or '') of a tolerated input."""
    lines = result.stderr.splitlines()
    if case.code == 0:
        warnings = [line for line in lines if line.startswith("warning:")]
        assert len(warnings) <= 1, result.stderr
        return warnings[0] if warnings else ""
    if not case.logs:
        assert len(lines) == 1, result.stderr
    *logs, last = lines or [""]
    assert not [line for line in logs if line.startswith(("error:", "warning:", " "))], result.stderr
    return last


def check_case(case: Case, ctx: Ctx, result) -> None:
    assert result.exit_code == case.code, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr and result.stdout == "", (result.stdout, result.stderr)
    line = message_of(case, result)
    if case.code:
        assert line.startswith("error: "), line
    assert re.search(case.problem, line), (case.problem, line)
    assert case.fix is None or re.search(case.fix, line), (case.fix, line)
    if case.check is not None:
        case.check(ctx)
    if not case.writes:
        assert snapshot(ctx.tmp) == ctx.before, "the command wrote or changed files"
    assert_no_temp_files(ctx.tmp)


def params(cases: Sequence[Case]) -> list:
    out = []
    for case in cases:
        marks = []
        if case.root_skip:
            marks.append(pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions"))
        if case.needs_no_cuda:
            marks.append(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"))
        out.append(pytest.param(case, marks=marks, id=case.id))
    return out


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]


def record_row(case: Case, result) -> None:
    """With $GENAI_CATALOGUE=FILE, append the row as it ran (markdown): how the catalogue is published."""
    if target := os.environ.get("GENAI_CATALOGUE"):
        line = (result.stderr.splitlines() or [""])[-1] if case.code else message_of(case, result)
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(f"| `{case.id}` | `genai {' '.join(case.argv)}` | {result.exit_code} | {line.replace('|', '/')} |\n")


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tiny_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENAI_DEBUG", raising=False)
    ctx = Ctx(tmp_path, tiny_runs, monkeypatch)
    try:
        result = run_case(case, ctx)
        record_row(case, result)
        check_case(case, ctx, result)
    finally:
        for cleanup in reversed(ctx.cleanups):
            cleanup()
