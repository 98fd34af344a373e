"""Durable tasks, workflows and schedules: queues, leases, workers, the reaper, the DLQ.

See docs/concepts/tasks.md for states, leases and fencing, retries and delivery guarantees,
docs/concepts/workflows.md for durable workflows and docs/concepts/schedules.md.
"""

from __future__ import annotations

from legato.orchestrator.app import Orchestrator, TaskCall
from legato.orchestrator.dead_letters import DeadLetterQueue
from legato.orchestrator.health import (
    DEFAULT_HEALTH_POLICY,
    HealthObservation,
    HealthPolicy,
    WorkerHealth,
    WorkerStatus,
    classify_observation,
    observe,
    request_drain,
)
from legato.orchestrator.resources import Capacity, Resources
from legato.orchestrator.schedules import Scheduler
from legato.orchestrator.task import DEFAULT_RETRY, TaskContext, TaskDefinition, current_task
from legato.orchestrator.worker import STORE_BACKOFF, Worker, WorkerConfig
from legato.orchestrator.workflow import (
    DEFAULT_STEP_RETRY,
    WORKFLOW_RUN_RETRY,
    WorkflowDefinition,
    WorkflowEngine,
)
from legato.orchestrator.workflow_context import StepContext, WorkflowContext, current_step
from legato.orchestrator.workflow_errors import NonDeterminismError, StepFailedError
from legato.store.errors import StaleLeaseError
from legato.store.records import EndReason, TaskEvent, TaskRecord, TaskState
from legato.store.schedule_store import ScheduleRecord
from legato.store.workflow_records import (
    JournalEntry,
    WorkflowEvent,
    WorkflowRecord,
    WorkflowState,
)

__all__ = [
    "DEFAULT_HEALTH_POLICY",
    "DEFAULT_RETRY",
    "DEFAULT_STEP_RETRY",
    "STORE_BACKOFF",
    "WORKFLOW_RUN_RETRY",
    "Capacity",
    "DeadLetterQueue",
    "EndReason",
    "HealthObservation",
    "HealthPolicy",
    "JournalEntry",
    "NonDeterminismError",
    "Orchestrator",
    "Resources",
    "ScheduleRecord",
    "Scheduler",
    "StaleLeaseError",
    "StepContext",
    "StepFailedError",
    "TaskCall",
    "TaskContext",
    "TaskDefinition",
    "TaskEvent",
    "TaskRecord",
    "TaskState",
    "Worker",
    "WorkerConfig",
    "WorkerHealth",
    "WorkerStatus",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowEngine",
    "WorkflowEvent",
    "WorkflowRecord",
    "WorkflowState",
    "classify_observation",
    "current_step",
    "current_task",
    "observe",
    "request_drain",
]
