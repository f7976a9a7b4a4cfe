"""The only module that writes to the terminal.

stdout carries data alone (JSON, text answers, PNG bytes); logs, warnings and progress go
to stderr through one rich Console, so `genai sample --out - | tool` and `--json` stay
clean. rich honours NO_COLOR, TERM=dumb and friends; when stderr is not a terminal the
progress bar becomes a plain log line every few steps, so CI logs show progress as it happens.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

_stderr = Console(stderr=True, highlight=False, soft_wrap=True)
_quiet = False


def configure(quiet: bool = False) -> None:
    """Set once by the CLI: quiet drops informational logs, never warnings or errors."""
    global _quiet
    _quiet = quiet


@contextmanager
def info_held_back() -> Iterator[None]:
    """Informational logs dropped for a while: the torchrun launcher's check of the flags loads what
    rank 0 loads again, and rank 0 says it."""
    global _quiet
    was, _quiet = _quiet, True
    try:
        yield
    finally:
        _quiet = was


def printable(text: object) -> str:
    """`text` with control characters and lone surrogates escaped: strings from files (class names,
    paths, metadata) go into one-line messages and terminal output, and must not add lines or
    terminal codes there."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _lines(text: str) -> str:
    """Each line made printable; the text's own line breaks kept."""
    return "\n".join(printable(line) for line in text.split("\n"))


# info, warn and error escape their whole message, so no caller can pass a file's string to the terminal raw.
def info(message: str) -> None:
    if not _quiet:
        _stderr.print(_lines(message), markup=False)


def warn(message: str) -> None:
    # Text, not markup: messages hold paths and file names, and "[...]" in them is not markup.
    _stderr.print(Text.assemble(("warning:", "yellow"), " ", printable(message)), soft_wrap=True)  # one line, as errors


def error(message: str) -> None:
    # One line (a newline in it is escaped too): no wrapping by rich, so a log grep finds the whole message.
    _stderr.print(Text.assemble(("error:", "bold red"), " ", printable(message)), soft_wrap=True)


def print_exception() -> None:
    """The traceback of the exception being handled (--debug only)."""
    _stderr.print_exception()


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def json_safe(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers and strict parsers (jq) reject them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout (the `--json` contract)."""
    sys.stdout.write(json.dumps(json_safe(obj), sort_keys=True, allow_nan=False) + "\n")
    sys.stdout.flush()


def emit_text(text: str) -> None:
    """Text answers on stdout, each line escaped like the logs (they name files and classes)."""
    sys.stdout.write(_lines(text) + "\n")
    sys.stdout.flush()


def emit_bytes(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def eval_table(result: dict[str, Any]) -> None:
    """The people's view of an eval result: metrics, protocol and gates on stderr."""
    from rich.table import Table

    table = Table(title="genai eval", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result["metrics"].items():
        if isinstance(value, dict):  # per class, a line each: names come from files, so no markup and escaped
            value = Text("\n".join(f"{printable(k)} {v:.3f}" for k, v in value.items()))
        elif isinstance(value, float):
            value = f"{value:.4g}" if math.isfinite(value) else "n/a"
        table.add_row(name, value if isinstance(value, Text) else str(value))
    for gate in result["gates"]:
        table.add_row(f"gate {gate['gate']}", "[green]pass[/green]" if gate["passed"] else "[red]FAIL[/red]")
    _stderr.print(table)
    protocol = ", ".join(f"{k}={v}" for k, v in result["protocol"].items())
    info(f"protocol: {protocol}")


class StepProgress:
    """Progress of a training run: a rich bar on a terminal, plain lines elsewhere."""

    def __init__(self, total: int, start: int, bar: Progress | None) -> None:
        self.total, self._bar = total, bar
        self._task = bar.add_task("train", total=total, completed=start, stats="") if bar else None

    def set_total(self, total: int) -> None:
        """The run's length changed (a --max-time budget was planned)."""
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def report(self, step: int, stats: dict[str, float]) -> None:
        """Called every log interval with averaged statistics."""
        if self._bar is not None:
            brief = {k: v for k, v in stats.items() if k.startswith("loss") or k == "images_per_sec"}
            self._bar.update(self._task, completed=step, stats="  ".join(_format_stat(k, v) for k, v in brief.items()))
        else:
            info(f"step {step}/{self.total}  " + "  ".join(_format_stat(k, v) for k, v in stats.items()))


def _format_stat(key: str, value: float) -> str:
    if key in ("step", "epoch"):
        return f"{key} {int(value)}"
    if key == "images_per_sec":
        return f"{value:.0f} img/s"
    return f"{key} {value:.4g}" if abs(value) < 1e4 else f"{key} {value:.0f}"


@contextmanager
def step_progress(total: int, start: int) -> Iterator[StepProgress]:
    if _quiet or not _stderr.is_terminal:
        yield StepProgress(total, start, None)
        return
    bar = Progress(
        TextColumn("[bold]train"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=_stderr,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with bar:
        yield StepProgress(total, start, bar)

