"""The dead-letter queue: list, replay one or many, delete for good."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from legato.service.errors import ApiError
from legato.service.models import DeadLetterReplay, ErrorEnvelope, ReplayResult, TaskView
from legato.service.routes.dependencies import runtime_of
from legato.service.runtime import OperatorRuntime
from legato.store.records import TaskState

__all__ = ["router"]

router = APIRouter(tags=["dead letters"])

Runtime = Annotated[OperatorRuntime, Depends(runtime_of)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorEnvelope},
    404: {"model": ErrorEnvelope},
    409: {"model": ErrorEnvelope},
    422: {"model": ErrorEnvelope},
}


@router.get("/dlq", response_model=list[TaskView], responses=_ERRORS)
async def list_dead(
    runtime: Runtime,
    queue: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[TaskView]:
    """Dead tasks, oldest first, with their last error."""
    records = await runtime.orchestrator.dead_letters.list(queue=queue, limit=limit)
    return [TaskView.of(record) for record in records]


@router.post("/dlq/replay", response_model=ReplayResult, responses=_ERRORS)
async def replay(body: DeadLetterReplay, runtime: Runtime) -> ReplayResult:
    """Send dead (or cancelled) tasks back to pending; the others are listed as skipped."""
    wanted = sorted(set(body.task_ids))
    replayed = await runtime.orchestrator.dead_letters.replay(wanted)
    done = set(replayed)
    return ReplayResult(replayed=replayed, skipped=[i for i in wanted if i not in done])


@router.delete("/dlq/{task_id}", status_code=204, response_class=Response, responses=_ERRORS)
async def delete_dead(
    task_id: Annotated[int, Path(ge=1, le=2**63 - 1)], runtime: Runtime
) -> Response:
    """Delete a dead task for good (404 if unknown, 409 if it is not dead)."""
    record = await runtime.orchestrator.get_task(task_id)
    if record is None:
        raise ApiError.not_found("task", task_id)
    if record.state is not TaskState.DEAD:
        raise ApiError(
            409,
            "conflict",
            f"task {task_id} is {record.state.value}; only dead tasks can be deleted",
            {"id": task_id, "state": record.state.value},
        )
    await runtime.orchestrator.dead_letters.purge([task_id])
    return Response(status_code=204)
