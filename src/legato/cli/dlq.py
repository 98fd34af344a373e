"""`legato dlq list | replay | purge`: the dead-letter queue from a shell."""

from __future__ import annotations

from typing import Annotated

import typer

from legato.cli.backend import open_backend
from legato.cli.exit_codes import ExitCode
from legato.cli.invoke import JsonOption, invoke
from legato.cli.options import CliOptions
from legato.cli.output import Output
from legato.kernel.errors import ValidationError

__all__ = ["dlq_app"]

dlq_app = typer.Typer(
    name="dlq",
    help="The dead-letter queue: tasks that will not run again unless replayed.",
    no_args_is_help=True,
    add_completion=False,
)

TaskIds = Annotated[list[int], typer.Argument(metavar="ID...", help="Task ids.", min=1)]


@dlq_app.command("list")
def list_command(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Option(help="Only this queue.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="At most this many.", min=1, max=1000)] = 100,
    json_output: JsonOption = False,
) -> None:
    """List dead tasks, oldest first, with their last error."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        async with open_backend(options) as backend:
            found = await backend.dead_letters(queue=queue, limit=limit)
        output.dead_letters(found)
        return None

    invoke(ctx, work, json_output=json_output)


@dlq_app.command("replay")
def replay_command(
    ctx: typer.Context,
    task_ids: TaskIds,
    json_output: JsonOption = False,
) -> None:
    """Send dead (or cancelled) tasks back to pending; exit 1 if any was skipped."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        async with open_backend(options) as backend:
            result = await backend.replay(task_ids)
        skipped = result["skipped"]
        text = f"replayed {len(result['replayed'])} task(s)"
        if skipped:
            text += f"; skipped (not dead or cancelled, or unknown): {skipped}"
        output.result(result, text)
        return ExitCode.FAILED if skipped else None

    invoke(ctx, work, json_output=json_output)


@dlq_app.command("purge")
def purge_command(
    ctx: typer.Context,
    task_ids: Annotated[
        list[int] | None, typer.Argument(metavar="[ID...]", help="Dead task ids.", min=1)
    ] = None,
    older_than: Annotated[
        float | None,
        typer.Option(
            help="Instead of ids: every task dead for more than this many seconds (store mode).",
            min=0,
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Delete dead tasks for good: these ids, or all dead for longer than --older-than."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        if bool(task_ids) == (older_than is not None):
            raise ValidationError(
                "ID", task_ids, "task ids or --older-than SECONDS (exactly one of them)"
            )
        async with open_backend(options) as backend:
            result = await backend.purge(task_ids or (), older_than=older_than)
        output.result(result, f"purged {result['purged']} dead task(s)")
        return None

    invoke(ctx, work, json_output=json_output)
