"""The errors a user can see, each with its exit code.

Every failure the CLI reports is one of these: the message is one line that names the
problem and the fix, and `cli.py` turns it into that line on stderr plus the exit code.
Anything else that escapes is a bug and is reported as an internal error.
"""

from __future__ import annotations


class ExitCode:
    """Exit codes, as documented in the README."""

    OK = 0
    RUNTIME = 1  # data, checkpoint, filesystem or training failure
    USAGE = 2  # wrong flags or arguments (Typer uses 2 as well)
    GATE_FAILED = 3  # `genai eval --fail-if` threshold not met
    EXPORT_CHECK_FAILED = 4  # `genai export --check`: the exported model computes something else
    DIVERGED = 5  # training produced NaN/inf losses or weights; the last good checkpoint is kept
    SIGINT = 130  # interrupted with Ctrl-C; a checkpoint was saved
    SIGTERM = 143  # terminated; a checkpoint was saved


class GenaiError(Exception):
    """A failure the user can act on; `str(err)` is the one-line message."""

    exit_code = ExitCode.RUNTIME


class UsageError(GenaiError):
    """Flags or arguments that cannot work together."""

    exit_code = ExitCode.USAGE


class DataError(GenaiError):
    """A dataset that is missing, empty or unreadable."""


class CheckpointError(GenaiError):
    """A checkpoint that is missing, truncated, foreign or of another model kind."""


class ExportCheckFailed(GenaiError):
    """An export whose outputs differ from the PyTorch model's beyond the tolerance.

    Carries the export summary so `--json` can still report the measured differences.
    """

    exit_code = ExitCode.EXPORT_CHECK_FAILED

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


class GateFailed(GenaiError):
    """A `genai eval --fail-if` threshold was crossed."""

    exit_code = ExitCode.GATE_FAILED


class TrainingDiverged(GenaiError):
    """Losses or weights became NaN or infinite; nothing non-finite was saved."""

    exit_code = ExitCode.DIVERGED


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C's KeyboardInterrupt: the same `finally` and
    `except BaseException` cleanups run (staging folders, temporary files), then exit 143."""


class Interrupted(GenaiError):
    """Training stopped by a signal after saving a checkpoint."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
