"""Workers: the registry with each worker's health by the policy, and drain."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from legato.service.errors import ApiError
from legato.service.models import ErrorEnvelope, WorkerView
from legato.service.routes.dependencies import runtime_of
from legato.service.runtime import OperatorRuntime
from legato.store.records import WorkerRecord, WorkerState

__all__ = ["router"]

router = APIRouter(tags=["workers"])

Runtime = Annotated[OperatorRuntime, Depends(runtime_of)]
WorkerId = Annotated[str, Path(min_length=1, max_length=300)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorEnvelope},
    404: {"model": ErrorEnvelope},
    422: {"model": ErrorEnvelope},
}


async def _refresh(runtime: OperatorRuntime) -> list[WorkerRecord]:
    # Observe now rather than show the last poll's view: the answer reflects this instant.
    records = await runtime.orchestrator.store.list_workers()
    runtime.registry.observe(records, runtime.clock.timestamp())
    return records


def _view(runtime: OperatorRuntime, record: WorkerRecord) -> WorkerView:
    status = runtime.registry.status(record.worker_id)
    return WorkerView.of(record, status, runtime.clock.timestamp())


@router.get("/workers", response_model=list[WorkerView])
async def list_workers(runtime: Runtime) -> list[WorkerView]:
    """Every registered (not stopped) worker with its health state and reason."""
    return [_view(runtime, record) for record in await _refresh(runtime)]


@router.get("/workers/{worker_id}", response_model=WorkerView, responses=_ERRORS)
async def get_worker(worker_id: WorkerId, runtime: Runtime) -> WorkerView:
    """One worker."""
    for record in await _refresh(runtime):
        if record.worker_id == worker_id:
            return _view(runtime, record)
    raise ApiError.not_found("worker", worker_id)


@router.post("/workers/{worker_id}/drain", response_model=WorkerView, responses=_ERRORS)
async def drain(worker_id: WorkerId, runtime: Runtime) -> WorkerView:
    """Drain a worker: no new work for it, running work finishes, then it deregisters.

    Written to the store, so it reaches a worker in any process at its next heartbeat.
    Idempotent."""
    for record in await _refresh(runtime):
        if record.worker_id == worker_id:
            await runtime.orchestrator.store.set_worker_state(worker_id, WorkerState.DRAINING)
            runtime.registry.drain(worker_id, runtime.clock.timestamp())
            runtime.hub.publish(
                "worker", {"id": worker_id, "state": "draining", "reason": "drain requested"}
            )
            return _view(runtime, dataclasses.replace(record, state=WorkerState.DRAINING.value))
    raise ApiError.not_found("worker", worker_id)
