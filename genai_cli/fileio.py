"""Crash-safe file writes: every file genai produces goes through `atomic_write`."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from genai_cli.errors import GenaiError

_UMASK = os.umask(0o022)  # read the process umask once (os.umask can only read it by setting it)
os.umask(_UMASK)

TEMP_SUFFIX = ".tmp"  # atomic writes stage `.<name>.<random>.tmp` beside the target


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over the target.

    A crash, Ctrl-C or full disk at any moment leaves either the old file or the new one,
    never a truncated mix.
    """
    path = Path(path)
    fd, tmp = _temporary(path)
    with _publishing(tmp, path):
        _write_synced(fd, data)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """`atomic_write` for data written piece by piece (a manifest of a million lines): the file
    replaces `path` only when the block ends without an error."""
    path = Path(path)
    fd, tmp = _temporary(path)
    with _publishing(tmp, path), os.fdopen(fd, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def _temporary(path: Path) -> tuple[int, str]:
    """A new `.<name>.<random>.tmp` beside `path`, with the permissions open() would give."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from err
    if hasattr(os, "fchmod"):  # mkstemp makes 0600 files
        os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp


@contextmanager
def _publishing(tmp: str, path: Path) -> Iterator[None]:
    """Rename `tmp` over `path` when the block succeeds; on any failure (signals too) remove it."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from err
        raise
    _fsync_dir(path.parent)


def _write_synced(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd`, fsync and close it: where a full disk or a failing device shows up."""
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_error(path: Path, err: OSError) -> GenaiError:
    """One line naming the file, the reason and a fix that fits the reason."""
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space and run again (the previous file, if any, is unchanged)"
    else:
        fix = "choose a writable --out"
    if err.errno in (errno.EEXIST, errno.ENOTDIR) and (blocker := _file_in_the_way(Path(path).parent)):
        reason = f"{blocker} is a file, not a folder"  # rather than mkdir's bare "File exists"
    return GenaiError(f"cannot write {path}: {reason}; {fix}")


def _file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing ancestor of `folder` (or itself) when it is not a folder."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def move_into_place(src: Path, dst: Path) -> None:
    """Rename a finished, fsynced file (written by `atomic_write` elsewhere on the same
    filesystem) over `dst`: how a staged artefact is published only after it was checked."""
    try:
        os.replace(src, dst)
    except OSError as err:
        raise write_error(dst, err) from err
    _fsync_dir(dst.parent)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself; not every platform allows opening a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


SPECIAL_FILES = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                 (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def special_kind(path: Path) -> str | None:
    """What `path` is when it exists but is not a regular file (following links), else None."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, or a name the OS cannot take: whoever opens it says so
        return None
    return next((name for test, name in SPECIAL_FILES if test(mode)), None if stat.S_ISREG(mode) else "special file")


def require_regular_file(path: Path, fix: str, error: type[GenaiError] = GenaiError) -> None:
    """Refuse a FIFO, device, socket or folder where a file is read: opening a FIFO blocks until
    someone writes to it, and a device may never end, so the check comes before any open."""
    if kind := special_kind(path):
        raise error(f"{path} is a {kind}, not a regular file; {fix}")


LOG_FIX = "remove it so genai can keep its log there"


def read_log(path: Path) -> str:
    """A log genai keeps (metrics.jsonl), refused when it is not a regular file."""
    require_regular_file(path, LOG_FIX)
    return Path(path).read_text(encoding="utf-8")


def append_line(path: Path, line: str) -> None:
    """Append one line (metrics.jsonl); a torn last line is dropped by readers."""
    require_regular_file(path, LOG_FIX)
    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
    except OSError as err:
        raise write_error(path, err) from err


def file_sha256(path: Path) -> str:
    """Content hash of a file, read in 1 MiB blocks (checkpoints and weights can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DirectoryBusy(GenaiError):
    """Another process holds the lock of a folder (a run being trained)."""


@contextmanager
def locked_directory(folder: Path, busy_message: str) -> Iterator[None]:
    """Hold an exclusive OS lock on `folder` itself (flock on the folder's descriptor) while the block runs.

    The kernel drops the lock when the process dies, SIGKILL included, so a lock is never stale,
    and no lock file is left in the user's folder. `busy_message` is the error when it is taken.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryBusy(busy_message) from None
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def directory_locked(folder: Path) -> bool:
    """Whether some process holds `folder`'s lock right now (the probe takes and drops it at once)."""
    if fcntl is None or not folder.is_dir():
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
