"""The one schema every backend shares, declared with SQLAlchemy Core.

Alembic migrations (`legato.store.migrations`) create these tables; the hot paths in
`legato.store.task_store` query them with driver-level SQL. Every timestamp column holds
POSIX seconds (a float) taken from a `Clock` and passed in as a parameter, never the
database's own `now()`, so simulated time drives leases and retries deterministically.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)

__all__ = [
    "metadata",
    "queues",
    "schedules",
    "task_events",
    "tasks",
    "workers",
    "workflow_events",
    "workflow_steps",
    "workflows",
]

metadata = MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_Id = BigInteger().with_variant(Integer(), "sqlite")

tasks = Table(
    "legato_tasks",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("queue", String(200), nullable=False),
    Column("payload", Text, nullable=False, doc="JSON: {'args': [...], 'kwargs': {...}}"),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("state", String(16), nullable=False),
    Column("end_reason", String(16)),
    Column("idempotency_key", String(400)),
    Column("run_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("retry", Text, nullable=False, doc="JSON form of the task's RetryPolicy"),
    Column("timeout", Float, doc="soft time limit of one attempt, seconds"),
    Column("resources", Text, nullable=False, server_default="{}"),
    Column("protected", Boolean, nullable=False, server_default=text("false")),
    Column("lease_owner", String(200)),
    Column("lease_expires_at", Float),
    Column("fencing_token", BigInteger, nullable=False, server_default="0"),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("result", Text),
    Column("error", Text),
    Column("error_kind", String(32)),
    Column("traceback", Text),
    Index(
        "ix_legato_tasks_claimable",
        "queue",
        text("priority DESC"),
        "id",
        sqlite_where=text("state IN ('pending', 'retrying')"),
        postgresql_where=text("state IN ('pending', 'retrying')"),
    ),
    Index(
        "ix_legato_tasks_lease",
        "lease_expires_at",
        sqlite_where=text("state = 'running'"),
        postgresql_where=text("state = 'running'"),
    ),
    Index("ix_legato_tasks_owner", "lease_owner"),
    Index("ix_legato_tasks_state_queue", "state", "queue"),
    Index("ux_legato_tasks_idempotency_key", "idempotency_key", unique=True),
)

task_events = Table(
    "legato_task_events",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    # No foreign key (migration 0006): only the store writes these rows, each in the same
    # statement as its task's change, and the purge deletes a task's history with it.
    Column("task_id", BigInteger),
    Column("at", Float, nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("worker_id", String(200)),
    Column("fencing_token", BigInteger),
    Column("detail", Text),
    Index("ix_legato_task_events_task", "task_id", "id"),
)

workers = Table(
    "legato_workers",
    metadata,
    Column("id", String(200), primary_key=True, doc="one id per worker process incarnation"),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", Text, nullable=False, doc="JSON list of queue names"),
    Column("resources", Text, nullable=False, doc="JSON: cpu, memory, gpus, labels"),
    Column("concurrency", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    Column("state", String(16), nullable=False, doc="active, draining, stopped"),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float),
)

queues = Table(
    "legato_queues",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("concurrency_limit", Integer, doc="running tasks across all workers; NULL: none"),
    Column("rate_limit", Float, doc="token-bucket refill, tasks per second; NULL: none"),
    Column("burst", Float, doc="token-bucket capacity"),
    Column("tokens", Float, doc="tokens left at tokens_updated_at"),
    Column("tokens_updated_at", Float),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
)

schedules = Table(
    "legato_schedules",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("task_name", String(200), nullable=False),
    Column("queue", String(200), nullable=False),
    Column("payload", Text, nullable=False),
    Column("interval_seconds", Float),
    Column("cron", String(200)),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("next_run_at", Float, nullable=False),
    Column("last_run_at", Float),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
)

workflows = Table(
    "legato_workflows",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("payload", Text, nullable=False),
    Column("task_id", BigInteger, ForeignKey("legato_tasks.id", ondelete="SET NULL")),
    Column("idempotency_key", String(400), unique=True),
    Column("result", Text),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("wake_at", Float, doc="end of a durable sleep"),
    Index("ix_legato_workflows_task", "task_id"),
    Index("ix_legato_workflows_state", "state", "id"),
)

workflow_steps = Table(
    "legato_workflow_steps",
    metadata,
    # No foreign key (migration 0007): only the store writes journal entries, each in a
    # statement that finds the workflow (and fences on its run's lease), and the store never
    # deletes a workflow.
    Column("workflow_id", BigInteger),
    Column("step_index", Integer, nullable=False),
    Column("step_name", String(200), nullable=False),
    Column("kind", String(16), nullable=False, doc="step or sleep"),
    Column("state", String(16), nullable=False),
    Column("result", Text),
    Column("error", Text),
    Column("compensation", String(200), doc="name of the undo function, if any"),
    Column("compensation_state", String(16)),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("function", String(400), doc="module.qualname of what ran at this position"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("compensation_error", Text),
    Column("compensated_at", Float),
    PrimaryKeyConstraint("workflow_id", "step_index"),
)

workflow_events = Table(
    "legato_workflow_events",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    # No foreign key (migration 0007), as for the journal above.
    Column("workflow_id", BigInteger, nullable=False),
    Column("at", Float, nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("task_id", BigInteger, doc="the run task that made the transition"),
    Column("detail", Text),
    Index("ix_legato_workflow_events_workflow", "workflow_id", "id"),
)
