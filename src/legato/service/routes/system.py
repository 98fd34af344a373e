"""Liveness, readiness, info, loops, bus, metrics and stats."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

import legato
from legato.service.metrics import CONTENT_TYPE, collect_metric_sources, render_metrics
from legato.service.models import (
    BusView,
    DependencyCheck,
    HealthView,
    InfoView,
    LatencySummary,
    LoopView,
    ReadinessView,
    StatsView,
    iso,
)
from legato.service.routes.dependencies import runtime_of
from legato.service.runtime import OperatorRuntime
from legato.store import migrate
from legato.store.records import TaskState

__all__ = ["router"]

router = APIRouter(tags=["system"])

Runtime = Annotated[OperatorRuntime, Depends(runtime_of)]


@router.get(
    "/health",
    response_model=HealthView,
    responses={503: {"model": HealthView, "description": "The event loop is stalled"}},
)
async def health(runtime: Runtime) -> Any:
    """Liveness: 200 while the event loop keeps up, 503 when it lags past the threshold."""
    lag = runtime.lag.lag()
    stalled = runtime.lag.stalled()
    view = HealthView(
        status="stalled" if stalled else "ok",
        loop_lag_seconds=lag,
        lag_threshold_seconds=runtime.lag.threshold,
    )
    if stalled:
        return JSONResponse(view.model_dump(), status_code=503)
    return view


@router.get(
    "/ready",
    response_model=ReadinessView,
    responses={503: {"model": ReadinessView, "description": "A dependency is not ready"}},
)
async def ready(runtime: Runtime) -> Any:
    """Readiness: store reachable, schema at the newest migration, bus running."""
    checks: list[DependencyCheck] = []
    try:
        await runtime.orchestrator.store.count_by_state()
        checks.append(DependencyCheck(name="store", ok=True, detail="reachable"))
        store_ok = True
    except Exception as error:  # any failure here is the answer, not a crash
        checks.append(DependencyCheck(name="store", ok=False, detail=f"unreachable: {error}"))
        store_ok = False
    if store_ok:
        try:
            # Alembic reads the schema synchronously; keep it off the event loop.
            current, head = await asyncio.to_thread(_revisions, runtime.settings.store.url)
            checks.append(
                DependencyCheck(
                    name="migrations",
                    ok=current == head,
                    detail=f"at {current}, newest {head}"
                    + ("" if current == head else ": run `legato db upgrade`"),
                )
            )
        except Exception as error:
            checks.append(DependencyCheck(name="migrations", ok=False, detail=str(error)))
    else:
        checks.append(DependencyCheck(name="migrations", ok=False, detail="store unreachable"))
    if runtime.bus is None:
        checks.append(DependencyCheck(name="bus", ok=True, detail="no bus attached"))
    else:
        checks.append(
            DependencyCheck(
                name="bus",
                ok=runtime.bus.running,
                detail="running" if runtime.bus.running else "not running",
            )
        )
    view = ReadinessView(ready=all(c.ok for c in checks), checks=checks)
    if not view.ready:
        return JSONResponse(view.model_dump(), status_code=503)
    return view


def _revisions(url: str) -> tuple[str | None, str]:
    return migrate.current(url), migrate.head()


@router.get("/info", response_model=InfoView)
async def info(runtime: Runtime) -> InfoView:
    """Version, uptime, store backend and the settings without secrets."""
    now = runtime.clock.timestamp()
    return InfoView(
        version=legato.__version__,
        started_at=runtime.started_at,
        started_at_iso=iso(runtime.started_at),
        uptime_seconds=max(0.0, now - runtime.started_at),
        backend=runtime.orchestrator.store.database.dialect,
        config=runtime.info_config(),
    )


@router.get("/loops", response_model=list[LoopView])
async def loops(runtime: Runtime) -> list[LoopView]:
    """Every supervised loop of this process (service and embedded workers) and its health."""
    views = []
    for name, health in sorted(runtime.loops().items()):
        owner = name.rpartition(":")[0] if name.startswith("worker ") else "service"
        views.append(LoopView.of(owner, health))
    return views


@router.get("/bus", response_model=BusView)
async def bus(runtime: Runtime) -> BusView:
    """The message bus: topics, subscribers, queue depths and dead letters."""
    if runtime.bus is None:
        return BusView(
            available=False,
            running=False,
            published=0,
            delivered=0,
            failed=0,
            retried=0,
            dead_lettered=0,
            history_size=0,
            topics=[],
            subscribers=[],
            dead_letters=[],
        )
    letters = [
        {
            "topic": letter.message.topic,
            "subscriber": letter.subscriber_id,
            "error": letter.error_text,
            "error_kind": letter.error_kind.value,
            "attempts": letter.attempts,
            "at": letter.timestamp,
        }
        for letter in runtime.bus.dead_letters[-100:]
    ]
    return BusView.of(runtime.bus.stats(), runtime.bus.running, letters)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request, runtime: Runtime) -> Response:
    """Prometheus metrics, read from the store and the registry at scrape time."""
    snapshot = await runtime.snapshot()
    extra = await collect_metric_sources(request.app)
    return Response(render_metrics(snapshot, extra), media_type=CONTENT_TYPE)


@router.get("/stats", response_model=StatsView)
async def stats(runtime: Runtime) -> StatsView:
    """Task counts, queue depths and p50/p95/p99 latencies as JSON."""
    snapshot = await runtime.snapshot()
    by_state: dict[str, int] = {state.value: 0 for state in TaskState}
    depths: dict[str, int] = {}
    for (queue, state), count in snapshot.tasks.items():
        by_state[state] += count
        if state in (TaskState.PENDING.value, TaskState.RETRYING.value):
            depths[queue] = depths.get(queue, 0) + count
    figures = snapshot.figures
    return StatsView(
        tasks_by_state=by_state,
        queue_depths=depths,
        workers_by_state=snapshot.workers,
        enqueue_to_start=LatencySummary.model_validate(figures.enqueue_to_start.summary()),
        run_time=LatencySummary.model_validate(figures.run_time.summary()),
        throughput_per_minute=figures.throughput.per_minute(runtime.clock.timestamp()),
        retries=figures.retries,
        dead_lettered=figures.dead_lettered,
        reaped=figures.reaped,
    )
