"""The dashboard: server-rendered pages over the same runtime the API reads, live via /events.

Pages are HTML for people and stay out of the OpenAPI schema; every action on them (cancel,
retry, replay, drain) calls the JSON API with the operator's bearer token.

Live updates re-render on the server: when /events reports a change, the page's script asks a
`/ui/fragments/...` route for the affected part (the overview's figures, a few task rows) and
swaps it in; pages without a finer fragment (a task's detail, workers, loops) re-read
themselves. One template renders a row or a card whether it arrives with the page or later,
so a live row never differs from a reloaded one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from legato.kernel.errors import ValidationError
from legato.service.errors import ApiError
from legato.service.models import BusView, TaskView, WorkerView, WorkflowView
from legato.service.routes.dependencies import runtime_of
from legato.service.routes.system import bus as bus_view
from legato.service.routes.system import stats as stats_view
from legato.service.runtime import OperatorRuntime
from legato.store.records import TaskState
from legato.store.workflow_store import WorkflowStore

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent.parent / "templates")

Runtime = Annotated[OperatorRuntime, Depends(runtime_of)]


_FRAGMENT_IDS = 200
"""At most this many task ids per fragment request (a page asks for what one burst changed)."""


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _task_ids(raw: str) -> list[int]:
    """Parse `ids=3,5,8`: positive integers, comma-separated, at most `_FRAGMENT_IDS`."""
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    valid = all(part.isascii() and part.isdigit() and int(part) > 0 for part in parts)
    if not parts or len(parts) > _FRAGMENT_IDS or not valid:
        raise ValidationError(
            "ids", raw, f"1 to {_FRAGMENT_IDS} task ids as positive integers, comma-separated"
        )
    return list(dict.fromkeys(int(part) for part in parts))


templates.env.filters["when"] = _when
templates.env.filters["tojson_compact"] = lambda value: json.dumps(value, separators=(",", ":"))


def _page(request: Request, runtime: OperatorRuntime, name: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "now": runtime.clock.timestamp(),
            "token_needed": runtime.access.token is not None,
            "states": [s.value for s in TaskState],
            **context,
        },
    )


async def _overview_figures(runtime: OperatorRuntime) -> dict[str, Any]:
    stats = await stats_view(runtime)
    workers = [
        WorkerView.of(r, runtime.registry.status(r.worker_id), runtime.clock.timestamp())
        for r in runtime.registry.records()
    ]
    return {
        "stats": stats,
        "workers": workers,
        "stalled": runtime.lag.stalled(),
        "lag": runtime.lag.lag(),
    }


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, runtime: Runtime) -> HTMLResponse:
    """Health, throughput and latency, queue depths and worker states."""
    figures = await _overview_figures(runtime)
    return _page(request, runtime, "overview.html", section="overview", **figures)


@router.get("/ui/fragments/overview", response_class=HTMLResponse)
async def overview_fragment(request: Request, runtime: Runtime) -> HTMLResponse:
    """The overview's live part (cards, charts, latency, queues, workers), for a live refresh."""
    figures = await _overview_figures(runtime)
    return _page(request, runtime, "overview_live.html", **figures)


@router.get("/ui/fragments/task-rows", response_class=HTMLResponse)
async def task_rows_fragment(
    request: Request, runtime: Runtime, ids: Annotated[str, Query(max_length=2000)]
) -> HTMLResponse:
    """Task-list rows for `ids` (those that exist), rendered as on the tasks page."""
    views = []
    for task_id in _task_ids(ids):
        record = await runtime.orchestrator.get_task(task_id)
        if record is not None:
            views.append(TaskView.of(record, placement=runtime.placement(record)))
    return _page(request, runtime, "task_rows.html", tasks=views)


@router.get("/ui/fragments/dead-letter-rows", response_class=HTMLResponse)
async def dead_letter_rows_fragment(
    request: Request, runtime: Runtime, ids: Annotated[str, Query(max_length=2000)]
) -> HTMLResponse:
    """Dead-letter rows for those of `ids` that are dead now, rendered as on the DLQ page."""
    views = []
    for task_id in _task_ids(ids):
        record = await runtime.orchestrator.get_task(task_id)
        if record is not None and record.state is TaskState.DEAD:
            views.append(TaskView.of(record))
    return _page(request, runtime, "dead_letter_rows.html", tasks=views)


@router.get("/ui/tasks", response_class=HTMLResponse)
async def tasks_page(
    request: Request,
    runtime: Runtime,
    state: Annotated[str | None, Query(max_length=20)] = None,
    queue: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    """The newest tasks, filterable by state and queue."""
    states = [TaskState(state)] if state in {s.value for s in TaskState} else []
    store = runtime.orchestrator.store
    if states:
        records = await store.list_tasks(states=states, queue=queue or None, limit=500)
    else:
        # The store lists by id, oldest first: read a window ending at the newest id seen.
        window_start = max(0, runtime.watcher.last_task_id - 1000)
        records = await store.list_tasks(queue=queue or None, limit=2000, after_id=window_start)
    newest = list(reversed(records[-200:]))
    views = [TaskView.of(r, placement=runtime.placement(r)) for r in newest]
    return _page(
        request,
        runtime,
        "tasks.html",
        section="tasks",
        tasks=views,
        state=state or "",
        queue=queue or "",
    )


@router.get("/ui/tasks/{task_id}", response_class=HTMLResponse)
async def task_page(request: Request, task_id: int, runtime: Runtime) -> HTMLResponse:
    """One task with its history."""
    record = await runtime.orchestrator.get_task(task_id)
    if record is None:
        raise ApiError.not_found("task", task_id)
    view = TaskView.of(record, history=True, placement=runtime.placement(record))
    return _page(request, runtime, "task.html", section="tasks", task=view)


@router.get("/ui/dlq", response_class=HTMLResponse)
async def dlq_page(request: Request, runtime: Runtime) -> HTMLResponse:
    """Dead letters with replay buttons, the most recent death first."""
    records = await runtime.orchestrator.dead_letters.list(limit=500)
    # Newest death first: the page adds live arrivals at the top.
    records.sort(key=lambda r: r.finished_at or r.updated_at, reverse=True)
    views = [TaskView.of(r) for r in records]
    return _page(request, runtime, "dlq.html", section="dlq", tasks=views)


@router.get("/ui/workers", response_class=HTMLResponse)
async def workers_page(request: Request, runtime: Runtime) -> HTMLResponse:
    """Workers with their health and a drain button."""
    records = await runtime.orchestrator.store.list_workers()
    now = runtime.clock.timestamp()
    runtime.registry.observe(records, now)
    views = [WorkerView.of(r, runtime.registry.status(r.worker_id), now) for r in records]
    return _page(request, runtime, "workers.html", section="workers", workers=views)


@router.get("/ui/loops", response_class=HTMLResponse)
async def loops_page(request: Request, runtime: Runtime) -> HTMLResponse:
    """Supervised loops and their health."""
    loops = sorted(runtime.loops().items())
    return _page(request, runtime, "loops.html", section="loops", loops=loops)


@router.get("/ui/bus", response_class=HTMLResponse)
async def bus_page(request: Request, runtime: Runtime) -> HTMLResponse:
    """The message bus."""
    view: BusView = await bus_view(runtime)
    return _page(request, runtime, "bus.html", section="bus", bus=view)


@router.get("/ui/workflows", response_class=HTMLResponse)
async def workflows_page(request: Request, runtime: Runtime) -> HTMLResponse:
    """The newest workflows."""
    store = WorkflowStore(runtime.orchestrator.store.database)
    records = await store.list(limit=500)
    views = [WorkflowView.of(record) for record in reversed(records)]
    return _page(request, runtime, "workflows.html", section="workflows", workflows=views)


@router.get("/ui/workflows/{workflow_id}", response_class=HTMLResponse)
async def workflow_page(request: Request, workflow_id: int, runtime: Runtime) -> HTMLResponse:
    """One workflow: steps, compensations and history."""
    record = await WorkflowStore(runtime.orchestrator.store.database).get(workflow_id)
    if record is None:
        raise ApiError.not_found("workflow", workflow_id)
    view = WorkflowView.of(record, detail=True)
    return _page(request, runtime, "workflow.html", section="workflows", workflow=view)
