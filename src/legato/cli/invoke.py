"""Running one command's work: its event loop, its one-line error, its exit status.

Every operating command hands `invoke` a coroutine function. Whatever it raises becomes a
single `error: ...` line on stderr and the exit status of `legato.cli.exit_codes`; the
traceback is printed only with `--debug`.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Annotated, Any

import typer

from legato.cli.exit_codes import ExitCode, exit_code_for
from legato.cli.options import CliOptions
from legato.cli.output import Output
from legato.kernel.clock import RealClock
from legato.kernel.errors import ConfigError, LegatoError
from legato.kernel.logs import configure_logging

__all__ = ["JsonOption", "describe", "fail", "invoke", "options_of"]

Work = Callable[[CliOptions, Output], Coroutine[Any, Any, ExitCode | None]]


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (as the global --json).")
]


def options_of(ctx: typer.Context, *, json_output: bool = False) -> CliOptions:
    """The global options the root command stored (defaults when a sub-app runs alone).

    `json_output` is the command's own `--json`, which counts as much as the global one.
    """
    options = ctx.find_root().obj
    if not isinstance(options, CliOptions):
        options = CliOptions()
    return replace(options, json_output=True) if json_output else options


def _leaves(error: BaseException) -> list[BaseException]:
    """The errors an exception group holds, however nested; `[error]` for any other."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def describe(error: BaseException) -> str:
    """One line saying what went wrong, for the operator (each error of a group, not the group)."""
    leaves = _leaves(error)
    if len(leaves) > 1 or leaves[0] is not error:
        return "; ".join(describe(leaf) for leaf in leaves)
    if isinstance(error, ConfigError):
        problems = "; ".join(f"{f}: got {v!r}, expected {e}" for f, v, e in error.problems)
        text = f"{error.source}: {problems}"
    elif isinstance(error, LegatoError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    notes = getattr(error, "__notes__", None)
    if notes:
        # What the code that saw the error added (PEP 678), such as where it happened.
        text += f" ({'; '.join(str(note) for note in notes)})"
    return " ".join(text.split())


def fail(options: CliOptions, error: BaseException) -> typer.Exit:
    """Print `error` as one line (and its traceback under --debug); return the Exit to raise."""
    output = Output(options.json_output, RealClock().timestamp())
    if options.debug:
        typer.echo("".join(traceback.format_exception(error)), err=True, nl=False)
    output.error(describe(error))
    # A task group's failure exits as the first error it holds would.
    return typer.Exit(int(exit_code_for(_leaves(error)[0])))


def invoke(ctx: typer.Context, work: Work, *, json_output: bool = False) -> None:
    """Run `work(options, output)` on a fresh event loop and exit with the right status."""
    options = options_of(ctx, json_output=json_output)
    output = Output(options.json_output, RealClock().timestamp())
    # Logs never go to stdout, which may be a JSON document. Retries and snapshot fallbacks
    # are warnings; the rest is for --debug. The process's own stderr, not whatever object
    # sys.stderr is now: a test runner's temporary stream is closed after the command.
    configure_logging(
        "debug" if options.debug else "warning", "console", stream=sys.__stderr__ or sys.stderr
    )
    try:
        code = asyncio.run(work(options, output))
    except KeyboardInterrupt:
        output.error("interrupted")
        raise typer.Exit(130) from None
    except Exception as error:
        raise fail(options, error) from None
    if code:
        raise typer.Exit(int(code))
