"""The API's request and response bodies: typed pydantic models, as the OpenAPI schema shows them.

Times are POSIX seconds (float) and ISO 8601 UTC strings side by side, so scripts get numbers
and people reading JSON get dates.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from legato.kernel.bus import BusStats
from legato.kernel.supervisor import LoopHealth
from legato.orchestrator.health import WorkerHealth, WorkerStatus
from legato.store.records import TaskEvent, TaskRecord, TaskState, WorkerRecord
from legato.store.workflow_records import JournalEntry, WorkflowRecord

__all__ = [
    "BusView",
    "DeadLetterReplay",
    "DependencyCheck",
    "ErrorBody",
    "ErrorEnvelope",
    "HealthView",
    "InfoView",
    "LatencySummary",
    "LoopView",
    "Placement",
    "ReadinessView",
    "ReplayResult",
    "StatsView",
    "SubmitTask",
    "SubscriberView",
    "TaskEventView",
    "TaskPage",
    "TaskView",
    "WorkerView",
    "WorkflowEventView",
    "WorkflowPage",
    "WorkflowStepView",
    "WorkflowView",
    "iso",
]


TaskIdValue = Annotated[int, Field(ge=1, le=2**63 - 1)]
"""A task id: the store's ids are positive 64-bit integers."""


def iso(timestamp: float | None) -> str | None:
    """POSIX seconds as an ISO 8601 UTC string (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class _Body(BaseModel):
    # Request bodies refuse unknown fields: a misspelt option must not be silently ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorBody(_Model):
    """What went wrong: a stable code, a sentence for people, details naming field and value."""

    code: str = Field(examples=["validation_error"])
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    request_id: str


class ErrorEnvelope(_Model):
    """Every error response has this shape."""

    error: ErrorBody


class HealthView(_Model):
    """Liveness: is the process's event loop responsive."""

    status: str = Field(examples=["ok", "stalled"])
    loop_lag_seconds: float | None = Field(description="Worst loop lag in the recent window")
    lag_threshold_seconds: float


class DependencyCheck(_Model):
    """One dependency of readiness and what was found."""

    name: str
    ok: bool
    detail: str


class ReadinessView(_Model):
    """Readiness: every dependency the service needs to do its job."""

    ready: bool
    checks: list[DependencyCheck]


class InfoView(_Model):
    """What is running: version, uptime, store backend and settings without secrets."""

    version: str
    started_at: float
    started_at_iso: str | None
    uptime_seconds: float
    backend: str
    config: dict[str, Any]


class TaskEventView(_Model):
    """One transition in a task's history."""

    at: float
    at_iso: str | None
    from_state: TaskState | None
    to_state: TaskState
    reason: str
    worker_id: str | None
    detail: str | None

    @classmethod
    def of(cls, event: TaskEvent) -> TaskEventView:
        """Build from the store's record."""
        return cls(
            at=event.at,
            at_iso=iso(event.at),
            from_state=event.from_state,
            to_state=event.to_state,
            reason=event.reason,
            worker_id=event.worker_id,
            detail=event.detail,
        )


class Placement(_Model):
    """Whether any live worker could ever run this task, and if not why."""

    schedulable: bool
    reason: str


class TaskView(_Model):
    """A task: its call, state, attempts, lease, outcome and (on detail) its history."""

    id: int
    name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    state: TaskState
    end_reason: str | None
    idempotency_key: str | None
    run_at: float
    created_at: float
    created_at_iso: str | None
    updated_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    timeout: float | None
    resources: dict[str, Any]
    protected: bool
    lease_owner: str | None
    lease_expires_at: float | None
    cancel_requested: bool
    result: Any = None
    error: str | None
    error_kind: str | None
    traceback: str | None = None
    placement: Placement | None = None
    history: list[TaskEventView] | None = None

    @classmethod
    def of(
        cls,
        record: TaskRecord,
        *,
        history: bool = False,
        placement: Placement | None = None,
    ) -> TaskView:
        """Build from the store's record (history only when asked: it costs a query)."""
        payload = json.loads(record.payload) if record.payload else {}
        return cls(
            id=record.task_id,
            name=record.name,
            queue=record.queue,
            args=list(payload.get("args", [])),
            kwargs=dict(payload.get("kwargs", {})),
            priority=record.priority,
            state=record.state,
            end_reason=record.end_reason.value if record.end_reason else None,
            idempotency_key=record.idempotency_key,
            run_at=record.run_at,
            created_at=record.created_at,
            created_at_iso=iso(record.created_at),
            updated_at=record.updated_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            attempts=record.attempts,
            timeout=record.timeout,
            resources=json.loads(record.resources) if record.resources else {},
            protected=record.protected,
            lease_owner=record.lease_owner,
            lease_expires_at=record.lease_expires_at,
            cancel_requested=record.cancel_requested,
            result=json.loads(record.result) if record.result else None,
            error=record.error,
            error_kind=record.error_kind,
            traceback=record.traceback if history else None,
            placement=placement,
            history=[TaskEventView.of(e) for e in record.history] if history else None,
        )


class TaskPage(_Model):
    """One page of tasks; pass `next_cursor` back as `cursor` for the next (null: no more)."""

    items: list[TaskView]
    next_cursor: str | None


class SubmitTask(_Body):
    """A task to submit: a registered task name and its JSON arguments, plus options."""

    name: str = Field(min_length=1, max_length=200, examples=["reports.build"])
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, min_length=1, max_length=200)
    priority: int | None = Field(default=None, ge=-(2**31) + 1, le=2**31 - 1)
    delay: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    run_at: float | None = Field(default=None, allow_inf_nan=False)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=400)
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    protected: bool | None = None


class DeadLetterReplay(_Body):
    """Dead (or cancelled) task ids to send back to pending."""

    task_ids: list[TaskIdValue] = Field(min_length=1, max_length=1000)


class ReplayResult(_Model):
    """Which ids were replayed and which were left alone (not dead or cancelled, or unknown)."""

    replayed: list[int]
    skipped: list[int]


class WorkerView(_Model):
    """A registered worker, its capacity and its health by the policy."""

    id: str
    host: str
    pid: int
    queues: list[str]
    resources: dict[str, Any]
    concurrency: int
    version: str
    registered_state: str
    state: WorkerHealth
    reason: str
    draining: bool
    state_since: float
    started_at: float
    heartbeat_at: float
    heartbeat_age_seconds: float

    @classmethod
    def of(cls, record: WorkerRecord, status: WorkerStatus, now: float) -> WorkerView:
        """Build from the registry record and the policy's status."""
        return cls(
            id=record.worker_id,
            host=record.host,
            pid=record.pid,
            queues=list(record.queues),
            resources=json.loads(record.resources) if record.resources else {},
            concurrency=record.concurrency,
            version=record.version,
            registered_state=record.state,
            state=status.state,
            reason=status.reason,
            draining=status.draining,
            state_since=status.changed_at,
            started_at=record.started_at,
            heartbeat_at=record.heartbeat_at,
            heartbeat_age_seconds=max(0.0, now - record.heartbeat_at),
        )


class WorkflowStepView(_Model):
    """One journal entry of a workflow: a step, a durable sleep, a journaled clock or seed."""

    index: int
    name: str
    kind: str
    state: str
    result: Any = None
    error: str | None
    attempts: int
    started_at: float
    finished_at: float | None
    compensation: str | None
    compensation_state: str | None
    compensation_error: str | None
    compensated_at: float | None

    @classmethod
    def of(cls, entry: JournalEntry) -> WorkflowStepView:
        """Build from the journal entry."""
        return cls(
            index=entry.index,
            name=entry.name,
            kind=entry.kind.value,
            state=entry.state.value,
            result=_json_or_text(entry.result),
            error=entry.error,
            attempts=entry.attempts,
            started_at=entry.started_at,
            finished_at=entry.finished_at,
            compensation=entry.compensation,
            compensation_state=entry.compensation_state,
            compensation_error=entry.compensation_error,
            compensated_at=entry.compensated_at,
        )


class WorkflowEventView(_Model):
    """One transition in a workflow's history."""

    at: float
    at_iso: str | None
    from_state: str | None
    to_state: str
    reason: str
    task_id: int | None
    detail: str | None


class WorkflowView(_Model):
    """A durable workflow: state, input, result; on detail its journal and history."""

    id: int
    name: str
    state: str
    input: Any = None
    task_id: int | None
    idempotency_key: str | None
    result: Any = None
    error: str | None
    created_at: float
    created_at_iso: str | None
    updated_at: float
    wake_at: float | None
    steps: list[WorkflowStepView] | None = None
    compensations: list[WorkflowStepView] | None = None
    history: list[WorkflowEventView] | None = None

    @classmethod
    def of(cls, record: WorkflowRecord, *, detail: bool = False) -> WorkflowView:
        """Build from the store's record (journal and history only on detail)."""
        steps = [WorkflowStepView.of(entry) for entry in record.journal] if detail else None
        return cls(
            id=record.workflow_id,
            name=record.name,
            state=record.state.value,
            input=_json_or_text(record.payload),
            task_id=record.task_id,
            idempotency_key=record.idempotency_key,
            result=_json_or_text(record.result),
            error=record.error,
            created_at=record.created_at,
            created_at_iso=iso(record.created_at),
            updated_at=record.updated_at,
            wake_at=record.wake_at,
            steps=steps,
            compensations=[s for s in steps if s.compensation] if steps is not None else None,
            history=[
                WorkflowEventView(
                    at=event.at,
                    at_iso=iso(event.at),
                    from_state=event.from_state.value if event.from_state else None,
                    to_state=event.to_state.value,
                    reason=event.reason,
                    task_id=event.task_id,
                    detail=event.detail,
                )
                for event in record.history
            ]
            if detail
            else None,
        )


class WorkflowPage(_Model):
    """One page of workflows; pass `next_cursor` back as `cursor` (null: no more)."""

    items: list[WorkflowView]
    next_cursor: str | None


def _json_or_text(text: str | None) -> Any:
    # Stored JSON comes back as JSON; anything else (older rows, plain text) as the text.
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class LoopView(_Model):
    """A supervised loop and its health."""

    owner: str
    name: str
    state: str
    iterations: int
    failures: int
    consecutive_failures: int
    last_success_at: str | None
    last_error: str | None
    last_error_at: str | None
    in_iteration: bool

    @classmethod
    def of(cls, owner: str, health: LoopHealth) -> LoopView:
        """Build from the supervisor's snapshot."""
        return cls(
            owner=owner,
            name=health.name,
            state=health.state.value,
            iterations=health.iterations,
            failures=health.failures,
            consecutive_failures=health.consecutive_failures,
            last_success_at=health.last_success_at.isoformat() if health.last_success_at else None,
            last_error=health.last_error,
            last_error_at=health.last_error_at.isoformat() if health.last_error_at else None,
            in_iteration=health.in_iteration,
        )


class SubscriberView(_Model):
    """One bus subscriber: what it listens to, its queue and its counters."""

    id: str
    pattern: str
    queue_depth: int
    max_queue: int
    delivered: int
    failed: int
    retried: int
    dead_lettered: int


class BusView(_Model):
    """The message bus: counters, topics listened to, subscribers and dead letters."""

    available: bool
    running: bool
    published: int
    delivered: int
    failed: int
    retried: int
    dead_lettered: int
    history_size: int
    topics: list[str]
    subscribers: list[SubscriberView]
    dead_letters: list[dict[str, Any]]

    @classmethod
    def of(cls, stats: BusStats, running: bool, dead_letters: list[dict[str, Any]]) -> BusView:
        """Build from a `MessageBus.stats()` snapshot."""
        return cls(
            available=True,
            running=running,
            published=stats.published,
            delivered=stats.delivered,
            failed=stats.failed,
            retried=stats.retried,
            dead_lettered=stats.dead_lettered,
            history_size=stats.history_size,
            topics=sorted({s.pattern for s in stats.subscribers}),
            subscribers=[
                SubscriberView(
                    id=s.subscriber_id,
                    pattern=s.pattern,
                    queue_depth=s.queue_depth,
                    max_queue=s.max_queue,
                    delivered=s.delivered,
                    failed=s.failed,
                    retried=s.retried,
                    dead_lettered=s.dead_lettered,
                )
                for s in stats.subscribers
            ],
            dead_letters=dead_letters,
        )


class LatencySummary(_Model):
    """Percentiles of one latency over the recent window, in seconds (null: no samples)."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


class StatsView(_Model):
    """Task counts and latency percentiles as JSON (the same figures /metrics exports)."""

    tasks_by_state: dict[str, int]
    queue_depths: dict[str, int]
    workers_by_state: dict[str, int]
    enqueue_to_start: LatencySummary
    run_time: LatencySummary
    throughput_per_minute: list[int]
    retries: int
    dead_lettered: int
    reaped: int
