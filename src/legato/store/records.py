"""The values the task store reads and writes: states, new tasks, leases, outcomes, history."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "EndReason",
    "ExpiredLease",
    "HeartbeatReply",
    "Lease",
    "NewTask",
    "Outcome",
    "QueueLimits",
    "Submitted",
    "TaskChange",
    "TaskEvent",
    "TaskRecord",
    "TaskState",
    "WorkerRecord",
    "WorkerState",
]


class TaskState(enum.StrEnum):
    """Where a task is in its life. Exactly one at any time; see docs/concepts/tasks.md."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for states a task leaves only by an operator's replay."""
        return self in (TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED)


class EndReason(enum.StrEnum):
    """Why an attempt ended without success."""

    ERROR = "error"
    TIMEOUT = "timeout"
    LEASE_LOST = "lease_lost"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to insert; JSON columns are already encoded (the orchestrator validates them)."""

    name: str
    queue: str
    payload: str
    priority: int
    run_at: float
    retry: str
    timeout: float | None = None
    resources: str = "{}"
    protected: bool = False
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Submitted:
    """The id a submission got, and whether it created the task or found one by its key."""

    task_id: int
    created: bool


@dataclass(frozen=True, slots=True)
class Lease:
    """A task claimed by a worker: everything needed to run it and to report on it."""

    task_id: int
    name: str
    queue: str
    payload: str
    priority: int
    attempt: int
    fencing_token: int
    lease_expires_at: float
    retry: str
    timeout: float | None
    resources: str
    protected: bool
    idempotency_key: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended, reported under the lease's fencing token.

    `state` is the task's next state: succeeded, retrying (then `run_at` is when), dead,
    cancelled or pending (a lease released without counting an attempt).
    """

    task_id: int
    fencing_token: int
    state: TaskState
    reason: str
    end_reason: EndReason | None = None
    result: str | None = None
    error: str | None = None
    error_kind: str | None = None
    traceback: str | None = None
    run_at: float | None = None


@dataclass(frozen=True, slots=True)
class ExpiredLease:
    """A running task whose lease ran out, as the reaper sees it."""

    task_id: int
    name: str
    attempt: int
    fencing_token: int
    lease_owner: str | None
    retry: str
    protected: bool
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One recorded transition of a task."""

    at: float
    from_state: TaskState | None
    to_state: TaskState
    reason: str
    worker_id: str | None
    fencing_token: int | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class TaskChange:
    """One recorded transition as read from the events table, in commit-id order.

    `event_id` orders changes across every task; `name`, `queue`, `attempts` and `run_at`
    are the task's values when the change was read (not necessarily when it happened).
    """

    event_id: int
    task_id: int
    name: str
    queue: str
    attempts: int
    run_at: float
    event: TaskEvent


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task as stored, with its history when it was asked for."""

    task_id: int
    name: str
    queue: str
    payload: str
    priority: int
    state: TaskState
    end_reason: EndReason | None
    idempotency_key: str | None
    run_at: float
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    retry: str
    timeout: float | None
    resources: str
    protected: bool
    lease_owner: str | None
    lease_expires_at: float | None
    fencing_token: int
    cancel_requested: bool
    result: str | None
    error: str | None
    error_kind: str | None
    traceback: str | None
    history: tuple[TaskEvent, ...] = ()


class WorkerState(enum.StrEnum):
    """What a worker incarnation says about itself in the registry table."""

    ACTIVE = "active"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """The store's answer to a heartbeat.

    `leases`: {task_id: cancel_requested} for every lease still held (a task missing from it
    was reaped or reassigned). `draining`: an operator asked this worker to drain.
    """

    leases: dict[int, bool]
    draining: bool


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker process incarnation as registered in the workers table."""

    worker_id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    resources: str
    concurrency: int
    version: str
    state: str
    started_at: float
    heartbeat_at: float
    stopped_at: float | None = None


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """A queue's limits that hold across every worker: concurrency and a token bucket."""

    name: str
    concurrency_limit: int | None = None
    rate_limit: float | None = None
    burst: float | None = None
    paused: bool = False
