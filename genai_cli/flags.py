"""The flag layer under cli.py: what Typer does not do the genai way.

- Enumerated flags are choices (`choice`): --help lists the values, shell completion offers them,
  and a value outside them is a usage error with the close one, as the flag is parsed.
- Help shows no fake placeholders: no `<bool>` beside a flag (`--force true` is an error), a
  name instead of `<int>`, `<int,int>...` or `<list[str]>`.
- Click's parse errors (unknown option, missing or bad value, bad choice, extra argument) are one
  `error:` line and exit 2, like genai's own errors, not Typer's usage block and rich box.
Every command of a `GenaiTyper` gets this, so a new command needs nothing more.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from typer._click import exceptions as click_errors  # Typer's own Click (never `import click`)
from typer.core import TyperCommand, TyperGroup

from genai_cli import console
from genai_cli.errors import ExitCode
from genai_cli.registry import normalise_name, unknown_name


def usage_message(err: click_errors.UsageError, ctx: typer.Context) -> str:
    """Click's parse errors as one line that names the flag and the fix, like genai's own errors."""
    see = f"{ctx.command_path} -h lists every option"
    params = {opt: p for p in ctx.command.params for opt in (*p.opts, *p.secondary_opts)}
    if isinstance(err, click_errors.NoSuchOption):
        close = difflib.get_close_matches(err.option_name, err.possibilities or params, n=1, cutoff=0.6)
        return f"unknown option {err.option_name}" + (f" (did you mean {close[0]}?)" if close else "") + f"; {see}"
    if isinstance(err, click_errors.BadOptionUsage):
        param = params.get(err.option_name)
        if "does not take a value" in err.message:
            return f"{err.option_name} is a flag and takes no value; write {err.option_name} alone"
        values = f"{param.nargs} values" if param is not None and param.nargs > 1 else "a value"
        values += f", {param.metavar}" if param is not None and param.metavar else ""
        return f"{err.option_name} needs {values}; {see}"
    if isinstance(err, click_errors.BadParameter) and err.param is not None:
        flag = err.param.opts[0] if err.param.opts else err.param.name.upper()
        if isinstance(err, click_errors.MissingParameter):
            return f"{flag} is required; {see}"
        return bad_value_message(err, err.param, flag)
    text = err.format_message().rstrip(".")
    if text.startswith("Got unexpected extra argument"):
        extra = text.rsplit("(", 1)[-1].rstrip(")")
        return (f"unexpected argument {extra!r}: flags take no value (write --force, not --force true) and every "
                f"value follows its option; {see}")
    if text.startswith("No such command"):
        return (text.replace("No such command", "unknown command", 1).replace(". Did you mean", " (did you mean")
                + (")" if "did you mean" in text.lower() else "") + f"; {ctx.command_path} -h lists the commands")
    return f"{text[:1].lower()}{text[1:]}; {see}"


def bad_value_message(err: click_errors.BadParameter, param: Any, flag: str) -> str:
    """A value Typer could not convert: the flag, what it takes and what it got (pydantic's error carries the
    input); messages of genai's own parsers already name the flag and stand as they are."""
    if flag in err.message:
        return err.message
    problems = getattr(err.__cause__, "errors", lambda: [])()
    if not problems:
        return f"{flag}: {err.message}"
    got, kind = problems[0].get("input"), problems[0].get("type", "")
    wanted = {"int_parsing": "a whole number", "float_parsing": "a number"}.get(kind, problems[0].get("msg", "a value"))
    if param.nargs > 1 and isinstance(got, str) and got.startswith("-"):  # a value is missing: the next flag took its place
        return f"{flag} takes {param.nargs} values, {param.metavar}, but {got} came before all of them were given"
    return f"{flag} takes {wanted}, got {got!r}"


class OneLineUsageErrors:
    """Mixed into genai's command classes: a parse error (unknown option, missing or bad value, bad choice) is one
    `error:` line and exit 2, through the same console as every other error; --debug adds the traceback."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        with one_line_usage_errors(ctx, args):
            return super().parse_args(ctx, args)  # type: ignore[misc]

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return no_fake_placeholders(super().get_params(ctx))  # type: ignore[misc]


@contextmanager
def one_line_usage_errors(ctx: typer.Context, args: list[str]) -> Iterator[None]:
    debug = "--debug" in args or bool(os.environ.get("GENAI_DEBUG"))  # before the parser consumes `args`
    try:
        yield
    except click_errors.NoArgsIsHelpError:  # bare `genai`: the help, as asked for
        raise
    except click_errors.UsageError as err:
        if ctx.resilient_parsing:  # shell completion parses half-typed lines
            raise
        if debug:
            console.print_exception()
        console.error(usage_message(err, ctx))
        raise typer.Exit(ExitCode.USAGE) from None


class GenaiCommand(OneLineUsageErrors, TyperCommand):
    pass


class GenaiGroup(OneLineUsageErrors, TyperGroup):
    def resolve_command(self, ctx: typer.Context, args: list[str]) -> Any:
        with one_line_usage_errors(ctx, args):
            return super().resolve_command(ctx, args)


class GenaiTyper(typer.Typer):
    """A Typer app whose group and commands are genai's classes above."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=GenaiGroup, **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] = GenaiCommand, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls, **kwargs)


def no_fake_placeholders(params: list[Any]) -> list[Any]:
    """Help shows no type for a flag (Typer writes `--force <bool>`, and `--force true` is an error), the
    option's own name for a value without a metavar (`--batch-size BATCH_SIZE`, not `<int>`), and an argument
    by its name alone (Typer adds `<str>` beside it)."""
    for param in params:
        if param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None
        elif param.metavar is None:
            param.metavar = "" if param.is_flag else param.name.upper()
    return params


def complete_from(names: Sequence[str]) -> Callable[[str], list[str]]:
    """Shell completion offering `names` (bash falls back to file names when none fits, e.g. for a folder)."""
    def complete(incomplete: str) -> list[str]:
        return [name for name in names if name.lower().startswith(incomplete.lower())]
    return complete


def choice(names: Sequence[str], *decls: str, help: str) -> Any:
    """An option whose value is one of `names` (any case, `_` for `-`): --help lists them, shell completion
    offers them, and anything else is a one-line usage error with the close name as the flag is parsed."""
    canonical = {normalise_name(name): name for name in names}

    def parse(value: str) -> str:
        if normalise_name(value) in canonical:
            return canonical[normalise_name(value)]
        raise typer.BadParameter(unknown_name(decls[0], value, tuple(names)))

    return typer.Option(*decls, parser=parse, metavar="|".join(names), autocompletion=complete_from(names), help=help)
