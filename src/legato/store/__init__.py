"""Persistence: one schema on SQLite (the embedded default) and PostgreSQL.

`TaskStore.open(url)` connects (migrating first by default); `upgrade(url)` is what
`legato db upgrade` runs. See docs/concepts/store.md.
"""

from __future__ import annotations

from legato.store.database import Database, Transaction
from legato.store.errors import StaleLeaseError, StoreUnavailableError
from legato.store.migrate import current, head, upgrade
from legato.store.postgres import PostgresDatabase
from legato.store.records import (
    EndReason,
    ExpiredLease,
    HeartbeatReply,
    Lease,
    NewTask,
    Outcome,
    QueueLimits,
    Submitted,
    TaskChange,
    TaskEvent,
    TaskRecord,
    TaskState,
    WorkerRecord,
    WorkerState,
)
from legato.store.sqlite import SqliteDatabase
from legato.store.task_store import NOTIFY_CHANNEL, TaskStore
from legato.store.url import DEFAULT_STORE_URL, StoreUrl

__all__ = [
    "DEFAULT_STORE_URL",
    "NOTIFY_CHANNEL",
    "Database",
    "EndReason",
    "ExpiredLease",
    "HeartbeatReply",
    "Lease",
    "NewTask",
    "Outcome",
    "PostgresDatabase",
    "QueueLimits",
    "SqliteDatabase",
    "StaleLeaseError",
    "StoreUnavailableError",
    "StoreUrl",
    "Submitted",
    "TaskChange",
    "TaskEvent",
    "TaskRecord",
    "TaskState",
    "TaskStore",
    "Transaction",
    "WorkerRecord",
    "WorkerState",
    "current",
    "head",
    "upgrade",
]
