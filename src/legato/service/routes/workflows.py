"""Workflows: durable sagas as the store records them, with their journal and history.

Read straight from the workflow store, so the service shows every workflow whether or not
this process registered its function.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from legato.service.errors import ApiError
from legato.service.models import ErrorEnvelope, WorkflowPage, WorkflowView
from legato.service.routes.dependencies import runtime_of
from legato.service.routes.tasks import decode_cursor, encode_cursor
from legato.service.runtime import OperatorRuntime
from legato.store.workflow_records import WorkflowState
from legato.store.workflow_store import WorkflowStore

__all__ = ["router"]

router = APIRouter(tags=["workflows"])

Runtime = Annotated[OperatorRuntime, Depends(runtime_of)]

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorEnvelope}}


def _store(runtime: OperatorRuntime) -> WorkflowStore:
    return WorkflowStore(runtime.orchestrator.store.database)


@router.get("/workflows", response_model=WorkflowPage)
async def list_workflows(
    runtime: Runtime,
    state: Annotated[list[WorkflowState] | None, Query(description="Any of these states")] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> WorkflowPage:
    """Workflows oldest first, filtered by state and name; follow `next_cursor`."""
    after = decode_cursor(cursor) if cursor else 0
    records = await _store(runtime).list(
        states=state or (), name=name, limit=limit + 1, after_id=after
    )
    page = records[:limit]
    more = len(records) > limit
    return WorkflowPage(
        items=[WorkflowView.of(record) for record in page],
        next_cursor=encode_cursor(page[-1].workflow_id) if more else None,
    )


@router.get("/workflows/{workflow_id}", response_model=WorkflowView, responses=_ERRORS)
async def get_workflow(
    workflow_id: Annotated[int, Path(ge=1, le=2**63 - 1)], runtime: Runtime
) -> WorkflowView:
    """One workflow with its steps (the journal), compensations and history."""
    record = await _store(runtime).get(workflow_id)
    if record is None:
        raise ApiError.not_found("workflow", workflow_id)
    return WorkflowView.of(record, detail=True)
