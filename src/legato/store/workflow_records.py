"""The values the workflow store reads and writes: states, journal entries, history."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "JournalEntry",
    "JournalWrite",
    "NewWorkflow",
    "StepKind",
    "StepState",
    "Transition",
    "WorkflowEvent",
    "WorkflowRecord",
    "WorkflowState",
]


class WorkflowState(enum.StrEnum):
    """Where a workflow is in its life; see docs/concepts/workflows.md."""

    PENDING = "pending"
    RUNNING = "running"
    SLEEPING = "sleeping"
    SUCCEEDED = "succeeded"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for states a workflow never leaves."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        WorkflowState.SUCCEEDED,
        WorkflowState.COMPENSATED,
        WorkflowState.DEAD,
        WorkflowState.CANCELLED,
    }
)


class StepKind(enum.StrEnum):
    """What a journal entry records: a step, a sleep's wake-up, a clock reading or a seed."""

    STEP = "step"
    SLEEP = "sleep"
    NOW = "now"
    RANDOM = "random"


class StepState(enum.StrEnum):
    """How a journaled step ended (its compensation has a state of its own)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    """A workflow to start: its registered name, JSON input and optional idempotency key."""

    name: str
    payload: str
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One position of a workflow's journal, written once, when the step ended.

    `result` is JSON text (a step's return value, a sleep's wake-up time, a journaled
    clock reading or seed); `error` is the failure that ended a failed step.
    `compensation_state` is None (no undo registered, or not run yet), "compensated" or
    "failed".
    """

    index: int
    name: str
    kind: StepKind
    state: StepState
    result: str | None
    error: str | None
    function: str | None
    compensation: str | None
    compensation_state: str | None
    compensation_error: str | None
    attempts: int
    started_at: float
    finished_at: float | None
    compensated_at: float | None = None


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """One recorded transition of a workflow."""

    at: float
    from_state: WorkflowState | None
    to_state: WorkflowState
    reason: str
    task_id: int | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """A workflow as stored, with its journal and history when they were asked for.

    `task_id` is the task that currently runs (or will next run) the workflow: only that
    task may write to its journal.
    """

    workflow_id: int
    name: str
    state: WorkflowState
    payload: str
    task_id: int | None
    idempotency_key: str | None
    result: str | None
    error: str | None
    created_at: float
    updated_at: float
    wake_at: float | None
    journal: tuple[JournalEntry, ...] = ()
    history: tuple[WorkflowEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class JournalWrite:
    """A journal entry to write for the run holding `task_id` under `fencing_token`."""

    workflow_id: int
    task_id: int
    fencing_token: int
    entry: JournalEntry


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change of a workflow, applied only while `task_id` still runs it."""

    workflow_id: int
    task_id: int
    to_state: WorkflowState
    reason: str
    result: str | None = None
    error: str | None = None
