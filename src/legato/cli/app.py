"""The `legato` Typer application: one entry point for every command.

Global options pick where commands act (`--store URL` on a store, `--url URL` through a
service, default: the store from the settings), how they print (`--json`) and how much they
say when something fails (`--debug`). Exit statuses are listed in `legato.cli.exit_codes`;
docs/cli.md describes every command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

import legato
from legato.cli import backtest, dlq, run, serve, tasks, workers
from legato.cli.backend import open_backend
from legato.cli.db import db_app
from legato.cli.exit_codes import ExitCode
from legato.cli.invoke import JsonOption, fail, invoke, options_of
from legato.cli.options import CliOptions
from legato.cli.output import Output
from legato.kernel.errors import ValidationError

__all__ = ["app", "main"]

app = typer.Typer(
    name="legato",
    help="Legato: a fault-tolerant orchestration runtime for trading desks and compute fleets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Settings file (default: legato.toml if present).", show_default=False
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Work directly on this store (sqlite:///PATH or postgresql://...).",
            show_default=False,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="LEGATO_URL",
            help="Go through the service at this URL (e.g. http://127.0.0.1:8600); the token "
            "comes from service.api_token or LEGATO_API_TOKEN.",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Print tracebacks of errors.")] = False,
    retries: Annotated[
        int,
        typer.Option(help="Service mode: retries of an unreachable service (1 s, 2 s, 4 s...)."),
    ] = 3,
) -> None:
    """Legato: a fault-tolerant orchestration runtime for trading desks and compute fleets."""
    try:
        options = CliOptions(
            config_file=config,
            store_url=store,
            service_url=url,
            json_output=json_output,
            debug=debug,
            retries=retries,
        )
    except ValidationError as error:
        raise fail(CliOptions(json_output=json_output, debug=debug), error) from None
    ctx.obj = options
    if store is not None or config is not None:
        # `legato db` has its own --url for the store: make the global choice its default.
        try:
            store_url = options.settings().store.url
        except ValidationError as error:
            raise fail(options, error) from None
        ctx.default_map = {
            **(ctx.default_map or {}),
            "db": {"upgrade": {"url": store_url}, "current": {"url": store_url}},
        }


@app.command()
def version(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Print Legato's version."""
    if options_of(ctx, json_output=json_output).json_output:
        typer.echo(json.dumps({"version": legato.__version__}))
    else:
        typer.echo(legato.__version__)


@app.command()
def workflows(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List durable workflows."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        async with open_backend(options) as backend:
            found = await backend.workflows()
        output.workflows(found)
        return None

    invoke(ctx, work, json_output=json_output)


app.command("run")(run.run)
app.command("backtest")(backtest.backtest)
app.command("serve")(serve.serve)
app.command("worker")(workers.worker)
app.command("submit")(tasks.submit)
app.command("tasks")(tasks.tasks)
app.command("task")(tasks.task)
app.command("cancel")(tasks.cancel)
app.command("retry")(tasks.retry)
app.command("workers")(workers.workers)
app.command("drain")(workers.drain)
app.add_typer(dlq.dlq_app, name="dlq")
app.add_typer(db_app, name="db")


def main() -> None:
    """Run the CLI (the `legato` console script)."""
    app()
