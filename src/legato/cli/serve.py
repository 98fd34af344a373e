"""`legato serve`: the operator service (API, dashboard, metrics, reaper), until Ctrl-C."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from legato.cli.invoke import fail, options_of
from legato.cli.output import Output
from legato.cli.task_imports import import_tasks
from legato.cli.workers import split_queues
from legato.kernel.logs import configure_logging
from legato.kernel.settings import load_settings, redact_url
from legato.orchestrator.app import Orchestrator
from legato.service.server import Service

__all__ = ["serve"]


def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to listen on (default: service.host, 127.0.0.1).", show_default=False
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="Port (default: service.port, 8600).", min=1, max=65535, show_default=False
        ),
    ] = None,
    embedded_worker: Annotated[
        bool, typer.Option("--embedded-worker", help="Also run a worker in this process.")
    ] = False,
    queues: Annotated[
        str, typer.Option("--queues", "-q", help="The embedded worker's queues.")
    ] = "default",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="The embedded worker's concurrency.", min=1)
    ] = 10,
    imports: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            "-i",
            help="Module defining tasks (MODULE or MODULE:APP), so POST /tasks accepts them; "
            "repeatable.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start the operator service: HTTP API, dashboard, metrics, reaper (Ctrl-C stops it)."""
    options = options_of(ctx)
    try:
        overrides: dict[str, Any] = {}
        if options.store_url is not None:
            overrides["store.url"] = options.store_url
        if host is not None:
            overrides["service.host"] = host
        if port is not None:
            overrides["service.port"] = port
        settings = load_settings(options.config_file, overrides=overrides)
        worker_queues = split_queues(queues)
        configure_logging(settings.log.level, settings.log.format)
        orchestrator = Orchestrator(settings.store.url)
        import_tasks(orchestrator, imports or ())
        service = Service(
            settings,
            orchestrator,
            embedded_worker=embedded_worker,
            worker_queues=worker_queues,
            worker_concurrency=concurrency,
        )
    except Exception as error:
        raise fail(options, error) from None
    Output(options.json_output, 0.0).note(
        f"legato serve: http://{settings.service.host}:{settings.service.port} "
        f"(store {redact_url(settings.store.url)}"
        f"{', embedded worker' if embedded_worker else ''}); Ctrl-C stops it"
    )

    async def main() -> None:
        service.install_signal_handlers()
        await service.run()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as error:
        raise fail(options, error) from None
