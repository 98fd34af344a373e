"""Task commands: `legato submit`, `tasks`, `task ID`, `cancel ID`, `retry ID`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from legato.cli.backend import Backend, open_backend, parse_states
from legato.cli.client import JsonObject
from legato.cli.exit_codes import ExitCode
from legato.cli.invoke import JsonOption, invoke
from legato.cli.options import CliOptions
from legato.cli.output import Output
from legato.kernel.errors import ValidationError
from legato.store.records import TaskState

__all__ = ["cancel", "retry", "submit", "task", "tasks"]

# How often `task --wait` looks again: quick enough for a person, light on the store.
_WAIT_POLL = 0.2

ImportOption = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        "-i",
        help="Module defining the tasks (MODULE or MODULE:APP); repeatable. Store mode only.",
        show_default=False,
    ),
]


def _json_argument(option: str, text: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    example = (
        "a JSON array, e.g. '[1, \"a\"]'" if kind is list else "a JSON object, e.g. '{\"k\": 1}'"
    )
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValidationError(option, text, f"{example} ({error})") from error
    if not isinstance(value, kind):
        raise ValidationError(option, text, example)
    return value


def submit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered task name (e.g. mytasks.send_email).")],
    args: Annotated[str, typer.Option("--args", help="Positional arguments, a JSON array.")] = "[]",
    kwargs: Annotated[
        str, typer.Option("--kwargs", help="Keyword arguments, a JSON object.")
    ] = "{}",
    queue: Annotated[
        str | None, typer.Option(help="Queue (default: the task's).", show_default=False)
    ] = None,
    priority: Annotated[
        int | None, typer.Option(help="Higher runs first (default: the task's).")
    ] = None,
    delay: Annotated[
        float | None, typer.Option(help="Seconds to wait before it may run.", min=0)
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Submitting the same key again returns the existing task."),
    ] = None,
    imports: ImportOption = None,
    json_output: JsonOption = False,
) -> None:
    """Submit a task; print it (its id is "id")."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        positional = _json_argument("--args", args, list)
        named = _json_argument("--kwargs", kwargs, dict)
        async with open_backend(options, imports=imports or ()) as backend:
            created = await backend.submit(
                name,
                positional,
                named,
                queue=queue,
                priority=priority,
                delay=delay,
                idempotency_key=idempotency_key,
            )
        output.result(created, f"submitted task {created['id']} ({name}, {created['state']})")
        return None

    invoke(ctx, work, json_output=json_output)


def tasks(
    ctx: typer.Context,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            "-s",
            help=f"Only these states (repeatable): {', '.join(s.value for s in TaskState)}.",
            show_default=False,
        ),
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue.", show_default=False)] = None,
    name: Annotated[
        str | None, typer.Option(help="Only this task name.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.", min=1, max=10_000)] = 50,
    json_output: JsonOption = False,
) -> None:
    """List tasks, oldest first."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        states = parse_states(state or ())
        async with open_backend(options) as backend:
            found = await backend.tasks(states=states, queue=queue, name=name, limit=limit)
        output.tasks(found)
        return None

    invoke(ctx, work, json_output=json_output)


async def _wait_for_end(backend: Backend, task_id: int, wait: float) -> JsonObject:
    clock = backend.clock
    deadline = clock.monotonic() + wait
    current = await backend.task(task_id)
    while not TaskState(current["state"]).terminal and clock.monotonic() < deadline:
        await clock.sleep(min(_WAIT_POLL, max(0.0, deadline - clock.monotonic())))
        current = await backend.task(task_id)
    return current


def task(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(metavar="ID", help="The task's id.", min=1)],
    wait: Annotated[
        float | None,
        typer.Option(
            help="Wait up to this many seconds for the task to finish; exit 0 only if it "
            "succeeded (1 if it ended dead or cancelled, or is still unfinished).",
            min=0,
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Show one task with its history."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        async with open_backend(options) as backend:
            if wait is None:
                found = await backend.task(task_id)
            else:
                found = await _wait_for_end(backend, task_id, wait)
        output.task(found)
        if wait is not None and found["state"] != TaskState.SUCCEEDED.value:
            state = found["state"]
            still = "" if TaskState(state).terminal else f" after waiting {wait:g}s"
            output.note(f"task {task_id} is {state}{still}")
            return ExitCode.FAILED
        return None

    invoke(ctx, work, json_output=json_output)


def cancel(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(metavar="ID", help="The task's id.", min=1)],
    json_output: JsonOption = False,
) -> None:
    """Cancel a task: waiting ones at once, a running one at its next heartbeat."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        async with open_backend(options) as backend:
            found = await backend.cancel(task_id)
        requested = found.get("cancel_requested") and found["state"] == "running"
        text = "cancel requested (it stops at its next heartbeat)" if requested else "cancelled"
        output.result(found, f"task {task_id}: {text}")
        return None

    invoke(ctx, work, json_output=json_output)


def retry(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(metavar="ID", help="The task's id.", min=1)],
    json_output: JsonOption = False,
) -> None:
    """Run a dead or cancelled task again (same id, fresh attempts)."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        async with open_backend(options) as backend:
            found = await backend.retry(task_id)
        output.result(found, f"task {task_id}: back to {found['state']}")
        return None

    invoke(ctx, work, json_output=json_output)
