"""Worker commands: `legato worker` (run one), `legato workers` (list), `legato drain ID`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from legato.cli.backend import build_orchestrator, open_backend
from legato.cli.exit_codes import ExitCode
from legato.cli.invoke import JsonOption, fail, invoke, options_of
from legato.cli.options import CliOptions
from legato.cli.output import Output
from legato.kernel.errors import ValidationError
from legato.kernel.logs import configure_logging
from legato.orchestrator.worker import WorkerConfig

__all__ = ["drain", "split_queues", "worker", "workers"]


def split_queues(text: str) -> tuple[str, ...]:
    """Parse `--queues a,b` into queue names (ValidationError if none is left)."""
    queues = tuple(part.strip() for part in text.split(",") if part.strip())
    if not queues:
        raise ValidationError("--queues", text, "comma-separated queue names, e.g. default,emails")
    return queues


def workers(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List registered workers and their health."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        async with open_backend(options) as backend:
            snapshot = await backend.workers()
        if snapshot.stale:
            output.note(
                f"service unreachable; showing snapshot from "
                f"{snapshot.fetched_at_datetime.isoformat(timespec='seconds')}"
            )
        output.workers(snapshot.value)
        return None

    invoke(ctx, work, json_output=json_output)


def drain(
    ctx: typer.Context,
    worker_id: Annotated[str, typer.Argument(metavar="ID", help="The worker's id.")],
    json_output: JsonOption = False,
) -> None:
    """Drain a worker: no new work, running work finishes, then it deregisters."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        async with open_backend(options) as backend:
            found = await backend.drain(worker_id)
        output.result(found, f"worker {worker_id}: {found['state']} ({found.get('reason', '')})")
        return None

    invoke(ctx, work, json_output=json_output)


def worker(
    ctx: typer.Context,
    queues: Annotated[
        str, typer.Option("--queues", "-q", help="Comma-separated queues to take tasks from.")
    ] = "default",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Tasks run at once.", min=1)
    ] = 10,
    imports: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            "-i",
            help="Module defining the tasks (MODULE or MODULE:APP); repeatable. Required.",
            show_default=False,
        ),
    ] = None,
    lease: Annotated[float, typer.Option(help="Lease length in seconds.", min=1)] = 30.0,
    grace: Annotated[
        float, typer.Option(help="Seconds running tasks get to finish on shutdown.", min=0)
    ] = 10.0,
) -> None:
    """Run a worker on the store until SIGTERM or Ctrl-C (then it finishes or releases)."""
    options = options_of(ctx)
    try:
        if options.service_mode:
            raise ValidationError(
                "--url",
                options.service_url,
                "no --url: a worker claims tasks from the store itself (use --store or settings)",
            )
        names = split_queues(queues)
        if not imports:
            raise ValidationError(
                "--import", None, "at least one module defining tasks (e.g. --import mytasks)"
            )
        config = WorkerConfig(lease_seconds=lease, grace=grace)
        settings = options.settings()
        configure_logging(settings.log.level, settings.log.format)
        orchestrator = build_orchestrator(options, imports)
    except Exception as error:
        raise fail(options, error) from None
    output = Output(options.json_output, 0.0)

    async def main() -> None:
        async with orchestrator:
            running = orchestrator.worker(names, concurrency=concurrency, config=config)
            running.install_signal_handlers()
            async with asyncio.TaskGroup() as group:
                group.create_task(running.run(), name=f"legato-cli-worker-{running.worker_id}")
                await running.ready.wait()
                output.note(
                    f"worker {running.worker_id} ready: queues {','.join(names)}, "
                    f"concurrency {concurrency}, tasks {', '.join(orchestrator.task_names)}"
                )

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as error:
        raise fail(options, error) from None
