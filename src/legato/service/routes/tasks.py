"""Tasks: submit, list with filters and cursor pagination, detail with history, cancel, retry."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from legato.kernel.errors import ValidationError
from legato.service.errors import ApiError
from legato.service.models import ErrorEnvelope, SubmitTask, TaskPage, TaskView
from legato.service.routes.dependencies import runtime_of
from legato.service.runtime import OperatorRuntime
from legato.store.records import TaskRecord, TaskState

__all__ = ["router"]

router = APIRouter(tags=["tasks"])

Runtime = Annotated[OperatorRuntime, Depends(runtime_of)]
TaskId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The task's id")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorEnvelope},
    404: {"model": ErrorEnvelope},
    409: {"model": ErrorEnvelope},
    422: {"model": ErrorEnvelope},
}


def encode_cursor(task_id: int) -> str:
    """The opaque cursor that continues after `task_id`."""
    return base64.urlsafe_b64encode(f"t:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The task id a cursor continues after; ValidationError for anything we did not issue."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        value = int(number)
        if prefix != "t" or value < 0:
            raise ValueError(text)
        return value
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise ValidationError("cursor", cursor, "a next_cursor from a previous page") from error


async def _get(runtime: OperatorRuntime, task_id: int) -> TaskRecord:
    record = await runtime.orchestrator.get_task(task_id)
    if record is None:
        raise ApiError.not_found("task", task_id)
    return record


@router.post(
    "/tasks",
    status_code=201,
    response_model=TaskView,
    responses={
        200: {"model": TaskView, "description": "The idempotency key exists: the existing task"},
        **_ERRORS,
    },
)
async def submit(body: SubmitTask, response: Response, runtime: Runtime) -> TaskView:
    """Submit a registered task. 201 with the new task; with an idempotency key that already
    exists, nothing is written and the existing task comes back with 200."""
    app = runtime.orchestrator
    call = app.call(
        body.name,
        *body.args,
        queue=body.queue,
        priority=body.priority,
        run_at=body.run_at,
        delay=body.delay,
        idempotency_key=body.idempotency_key,
        timeout=body.timeout,
        protected=body.protected,
        kwargs=body.kwargs,
    )
    submitted = (await app.store.submit([call.task], runtime.clock.timestamp()))[0]
    app.wake_local_workers()
    if not submitted.created:
        response.status_code = 200
    record = await _get(runtime, submitted.task_id)
    return TaskView.of(record, placement=runtime.placement(record))


@router.get("/tasks", response_model=TaskPage, responses=_ERRORS)
async def list_tasks(
    runtime: Runtime,
    state: Annotated[list[TaskState] | None, Query(description="Any of these states")] = None,
    queue: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    created_after: Annotated[float | None, Query(description="POSIX seconds")] = None,
    created_before: Annotated[float | None, Query(description="POSIX seconds")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> TaskPage:
    """List tasks oldest first, filtered by state, queue, name and creation time
    (`created_after <= created_at < created_before`). Follow `next_cursor` until it is null."""
    after = decode_cursor(cursor) if cursor else 0
    # One row more than the page tells whether another page follows.
    rows = await runtime.orchestrator.store.list_tasks(
        states=state or (),
        queue=queue,
        name=name,
        created_after=created_after,
        created_before=created_before,
        limit=limit + 1,
        after_id=after,
    )
    page = rows[:limit]
    items = [TaskView.of(record, placement=runtime.placement(record)) for record in page]
    more = len(rows) > limit
    return TaskPage(items=items, next_cursor=encode_cursor(page[-1].task_id) if more else None)


@router.get("/tasks/{task_id}", response_model=TaskView, responses=_ERRORS)
async def get_task(task_id: TaskId, runtime: Runtime) -> TaskView:
    """One task with its state history, error and traceback."""
    record = await _get(runtime, task_id)
    return TaskView.of(record, history=True, placement=runtime.placement(record))


@router.post("/tasks/{task_id}/cancel", response_model=TaskView, responses=_ERRORS)
async def cancel(task_id: TaskId, runtime: Runtime) -> TaskView:
    """Cancel a task: waiting ones at once, a running one is asked to stop at its next
    heartbeat (the task then shows `cancel_requested`). 409 for a finished task."""
    record = await _get(runtime, task_id)
    if record.state.terminal:
        raise ApiError(
            409,
            "conflict",
            f"task {task_id} is already {record.state.value}; only waiting or running tasks "
            "can be cancelled",
            {"id": task_id, "state": record.state.value},
        )
    await runtime.orchestrator.cancel(task_id)
    return TaskView.of(await _get(runtime, task_id), history=True)


@router.post("/tasks/{task_id}/retry", response_model=TaskView, responses=_ERRORS)
async def retry(task_id: TaskId, runtime: Runtime) -> TaskView:
    """Run a dead or cancelled task again with a fresh attempt budget (same id and key).
    409 for a task in any other state."""
    record = await _get(runtime, task_id)
    replayed = await runtime.orchestrator.dead_letters.replay([task_id])
    if not replayed:
        raise ApiError(
            409,
            "conflict",
            f"task {task_id} is {record.state.value}; only dead or cancelled tasks can be retried",
            {"id": task_id, "state": record.state.value},
        )
    return TaskView.of(await _get(runtime, task_id), history=True)
