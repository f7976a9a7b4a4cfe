"""Run directories: where a run lives, what genai owns in it, who may write it, and `runs/latest`.

A run directory is genai's only while a `genai train` holds it: the process takes an OS lock on
the folder (it dies with the process, so a killed run never leaves a stale lock), and a second
trainer, a resume of a run still training, or a `--force` over it is refused. genai replaces
only the files it writes (`OWNED_FILES` and its own sample grids), never a user's file beside them.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from genai_cli import checkpoint as ckpt
from genai_cli import console
from genai_cli.config import Config
from genai_cli.errors import CheckpointError, UsageError
from genai_cli.fileio import (
    TEMP_SUFFIX,
    atomic_write,
    directory_locked,
    locked_directory,
    read_log,
    special_kind,
    write_error,
)

RUNS_DIR = Path("runs")  # new runs and the `latest` link, relative to the working directory
LATEST = "latest"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
LOSS_FILE = "loss.svg"
REPORT_FILE = "report.html"
# loss.png: what genai before loss.svg drew, still genai's to replace in an old run.
OWNED_FILES = (ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.CONFIG_FILE, METRICS_FILE, LOSS_FILE, "loss.png", "reconstructions.png",
               REPORT_FILE)
SAMPLE_GRID = re.compile(r"step_\d{6,}\.png")  # what training writes into samples/
TENSORBOARD_DIR = "tensorboard"  # --tensorboard's event files
# Folders genai writes into, and the names of its files there; anything else in them is the user's.
OWNED_IN_FOLDERS = {SAMPLES_DIR: SAMPLE_GRID, TENSORBOARD_DIR: re.compile(r"events\.out\.tfevents\..+")}
STALE_TEMPORARY = re.compile(rf"\..+\.[A-Za-z0-9_]+{re.escape(TEMP_SUFFIX)}")  # atomic_write's staging names


# ---------------------------------------------------------------- naming and finding runs


def shown(path: Path) -> str:
    """A path as people read it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def real_run_dir(path: str | Path) -> Path:
    """The folder a run path names, through links (`runs/latest` is a link to the real run):
    a run's own name, its lock and the `latest` link must be the real folder's, never the link's."""
    path = Path(path)
    return Path(shown(path.resolve())) if path.is_symlink() else path


def latest_link() -> Path:
    return RUNS_DIR / LATEST


def new_run_dir(config: Config) -> Path:
    """Create runs/<model>-<data>-NNN with the next free number; two processes never get the same one."""
    data = Path(config.data.name).name if Path(config.data.name).exists() else config.data.name
    stem = f"{config.model.kind}-{data}"
    taken = [int(p.name.rsplit("-", 1)[1]) for p in RUNS_DIR.glob(f"{stem}-[0-9][0-9][0-9]*") if p.name.rsplit("-", 1)[1].isdigit()]
    number = max(taken, default=0) + 1
    while True:
        run_dir = RUNS_DIR / f"{stem}-{number:03d}"
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            number += 1  # another process took this number between the glob and the mkdir
        except OSError as err:
            raise write_error(run_dir, err) from err


def point_latest(run_dir: Path) -> None:
    """Atomically point runs/latest (where `genai sample` looks) at this run, wherever it lives."""
    link = latest_link()
    real = run_dir.resolve()
    target = real.name if real.parent == RUNS_DIR.resolve() else str(real)
    tmp = RUNS_DIR / f".latest.{os.getpid()}.tmp"
    try:
        RUNS_DIR.mkdir(exist_ok=True)
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        tmp.replace(link)
    except OSError as err:
        console.warn(f"could not update {link}: {err.strerror or err}; pass --checkpoint {run_dir} to sample")


def resolve_model_path(checkpoint: str | None) -> Path:
    """A run directory, a model file, or (None) the newest run via runs/latest, which is then named on stderr."""
    path = Path(checkpoint) if checkpoint else latest_link()
    if checkpoint is None and not path.exists():
        hint = "the runs/latest link points nowhere" if path.is_symlink() else "no runs/latest here"
        raise CheckpointError(f"no checkpoint given and {hint}; train one with `genai train` or pass --checkpoint")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run directory or a model.safetensors file")
    if path.is_dir():
        run_dir, path = path, path / ckpt.MODEL_FILE
        if not path.exists():
            if directory_locked(run_dir):
                raise CheckpointError(f"{run_dir} is still training and has no checkpoint yet; wait for its first "
                                      "one (written every --save-every steps and when training stops)")
            raise CheckpointError(f"{run_dir} has no {ckpt.MODEL_FILE}; is it a genai run directory?")
    if checkpoint is None:
        announce_latest(path)
    return path


def announce_latest(model_path: Path) -> None:
    """Say which run `runs/latest` meant, so a user never samples another run than they think."""
    try:
        metadata = ckpt.read_metadata(model_path)
        what = f"{console.printable(metadata['genai.kind'])}, step {console.printable(metadata.get('genai.step', '?'))}"
    except CheckpointError:
        what = "unreadable"  # the command itself reports why, in its own words
    console.info(f"using {shown(model_path.parent.resolve())} (runs/latest; {what})")


# ---------------------------------------------------------------- what genai owns in a folder


def is_owned(entry: Path) -> bool:
    """A file genai writes into a run directory (or a temporary an interrupted write left)."""
    return entry.name in OWNED_FILES or bool(STALE_TEMPORARY.fullmatch(entry.name))


def foreign_entries(run_dir: Path) -> list[Path]:
    """What is in `run_dir` that genai did not write: the user's, and never replaced."""
    foreign = []
    for entry in sorted(run_dir.iterdir()):
        if (owned := OWNED_IN_FOLDERS.get(entry.name)) and entry.is_dir() and not entry.is_symlink():
            foreign += [f for f in sorted(entry.iterdir()) if not (owned.fullmatch(f.name) or is_owned(f))]
        elif not is_owned(entry) or entry.is_dir():
            foreign.append(entry)
    return foreign


def holds_run(run_dir: Path) -> bool:
    """A checkpoint, or the config.json `genai train` writes first: a run, finished or not."""
    if (run_dir / ckpt.MODEL_FILE).exists() or (run_dir / ckpt.STATE_FILE).exists():
        return True
    config = run_dir / ckpt.CONFIG_FILE
    if special_kind(config):  # a FIFO there would block the read: not genai's, so not a run
        return False
    try:
        Config.from_json(config.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError, TypeError, RecursionError):
        return False


def remove_owned(run_dir: Path) -> None:
    """Delete what genai wrote (checkpoints first), leaving every other file of the user's alone."""
    for name in OWNED_FILES:
        (run_dir / name).unlink(missing_ok=True)
    remove_stale_temporaries(run_dir)
    for name, owned in OWNED_IN_FOLDERS.items():
        folder = run_dir / name
        if folder.is_dir() and not folder.is_symlink():
            for path in folder.iterdir():
                if owned.fullmatch(path.name):
                    path.unlink(missing_ok=True)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written files a killed process left (atomic writes never rename them into place)."""
    for folder in (run_dir, run_dir / SAMPLES_DIR):
        for path in folder.glob(f".*{TEMP_SUFFIX}"):
            if STALE_TEMPORARY.fullmatch(path.name):
                path.unlink(missing_ok=True)


def listing(entries: list[Path], run_dir: Path, most: int = 3) -> str:
    names = [console.printable(str(e.relative_to(run_dir))) for e in entries[:most]]
    return ", ".join(names) + (f" and {len(entries) - most} more" if len(entries) > most else "")


def check_replaceable(run_dir: Path, force: bool) -> None:
    """Refuse to train into a folder that holds a run or someone's files, unless --force;
    with --force only genai's own file names are replaced, and everything else stays."""
    if holds_run(run_dir):
        if not force:
            raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                             "replace it with --force, or choose another --out")
        if kept := foreign_entries(run_dir):
            console.info(f"--force: replacing the run in {run_dir}; keeping {len(kept)} file(s) genai did not "
                         f"write: {listing(kept, run_dir)}")
    else:  # genai wrote no run here, so every file in it is someone else's
        present = [e for e in sorted(run_dir.iterdir()) if not STALE_TEMPORARY.fullmatch(e.name)]
        if present and not force:
            raise UsageError(f"{run_dir} is not empty and holds no genai run ({listing(present, run_dir)}); "
                             "choose a new or empty --out, or pass --force to write the run beside those files "
                             "(genai then replaces only its own file names)")
        if present:
            console.warn(f"--force: writing a run into {run_dir}, which holds files genai did not write; only "
                         f"genai's own file names are replaced ({', '.join(OWNED_FILES)}, {SAMPLES_DIR}/step_*.png, "
                         f"{TENSORBOARD_DIR}/events.out.tfevents.*)")
    remove_owned(run_dir)


# ---------------------------------------------------------------- one process per run


def busy_message(run_dir: Path) -> str:
    return (f"{run_dir} is being trained by another genai process; wait for it to finish, stop it, "
            "or train into another --out")


@contextmanager
def claim_new(out: str | None, config: Config, force: bool) -> Iterator[Path]:
    """A locked, writable run directory for a new run: --out (made if missing), or the next runs/ name."""
    if out is not None and not out.strip():
        raise UsageError("--out is empty; name a run directory, or leave --out out for runs/<model>-<data>-NNN")
    run_dir = real_run_dir(out) if out else new_run_dir(config)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(run_dir, err) from err
    with locked_directory(run_dir, busy_message(run_dir)):
        check_replaceable(run_dir, force)  # under the lock: no other trainer writes here meanwhile
        try:
            (run_dir / SAMPLES_DIR).mkdir(exist_ok=True)
        except OSError as err:
            raise write_error(run_dir / SAMPLES_DIR, err) from err
        yield run_dir


@contextmanager
def claim_existing(run_dir: Path) -> Iterator[Path]:
    """The locked directory of a run being resumed (see `real_run_dir`)."""
    with locked_directory(run_dir, busy_message(run_dir)):
        yield run_dir


# ---------------------------------------------------------------- metrics.jsonl


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The whole lines of a metrics file; a torn last line from a crash is skipped."""
    rows = []
    if path.exists():
        for line in read_log(path).splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def loss_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training's log lines, without the `genai eval` results and `--keep best` scores recorded beside them."""
    return [r for r in rows if "eval" not in r and "judge" not in r]


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint: those steps are about to be redone."""
    if path.exists():
        kept = [json.dumps(row) for row in read_metrics(path) if row.get("step", 0) <= step]
        atomic_write(path, "".join(f"{line}\n" for line in kept).encode())
