"""The schedule store: schedule definitions and the atomic "fire this tick" transition.

Firing a tick is one transaction: a conditional UPDATE moves `next_run_at` from the tick
the scheduler saw to the next one, and only if that UPDATE matched does the task go in,
under an idempotency key naming the schedule and the tick. Two schedulers racing for the
same tick both try; one UPDATE matches and the other finds `next_run_at` already moved
(PostgreSQL re-checks the condition after waiting for the winner's row lock; SQLite's
`BEGIN IMMEDIATE` runs the two one after the other). The key is a second guard: even a
tick fired twice inserts one task.
"""

from __future__ import annotations

from dataclasses import dataclass

from legato.kernel.errors import ValidationError
from legato.store.database import Database, Row
from legato.store.records import NewTask
from legato.store.task_store import TaskStore

__all__ = ["ScheduleRecord", "ScheduleStore"]

_COLUMNS = (
    "name, task_name, queue, payload, interval_seconds, cron, timezone, next_run_at, "
    "last_run_at, enabled"
)


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A schedule as stored: what to enqueue, how often, and when the next tick is due.

    Exactly one of `interval_seconds` and `cron` is set. `payload` is the task's JSON
    arguments ({"args": [...], "kwargs": {...}}); times are POSIX seconds.
    """

    name: str
    task_name: str
    queue: str
    payload: str
    interval_seconds: float | None
    cron: str | None
    timezone: str
    next_run_at: float
    last_run_at: float | None
    enabled: bool


def _record(row: Row) -> ScheduleRecord:
    return ScheduleRecord(
        name=row[0],
        task_name=row[1],
        queue=row[2],
        payload=row[3],
        interval_seconds=row[4],
        cron=row[5],
        timezone=row[6],
        next_run_at=row[7],
        last_run_at=row[8],
        enabled=bool(row[9]),
    )


class ScheduleStore:
    """Schedules on one `Database` (SQLite or PostgreSQL)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        # A tick's task is written by the task store, inside the tick's transaction.
        self._tasks = TaskStore(database)

    async def create(self, schedule: ScheduleRecord) -> None:
        """Insert a new schedule; ValidationError if the name is taken (nothing changes)."""
        async with self.database.transaction() as tx:
            taken = await tx.fetch(
                "SELECT name FROM legato_schedules WHERE name = ?", (schedule.name,)
            )
            if taken:
                raise ValidationError("name", schedule.name, "a schedule name not already used")
            await tx.execute(
                f"INSERT INTO legato_schedules ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    schedule.name,
                    schedule.task_name,
                    schedule.queue,
                    schedule.payload,
                    schedule.interval_seconds,
                    schedule.cron,
                    schedule.timezone,
                    schedule.next_run_at,
                    schedule.last_run_at,
                    schedule.enabled,
                ),
            )

    async def replace(self, schedule: ScheduleRecord) -> None:
        """Overwrite an existing schedule; ValidationError if there is none by that name."""
        async with self.database.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE legato_schedules SET task_name = ?, queue = ?, payload = ?, "
                "interval_seconds = ?, cron = ?, timezone = ?, next_run_at = ?, enabled = ? "
                "WHERE name = ? RETURNING name",
                (
                    schedule.task_name,
                    schedule.queue,
                    schedule.payload,
                    schedule.interval_seconds,
                    schedule.cron,
                    schedule.timezone,
                    schedule.next_run_at,
                    schedule.enabled,
                    schedule.name,
                ),
            )
            if not rows:
                raise ValidationError("name", schedule.name, "the name of an existing schedule")

    async def delete(self, name: str) -> bool:
        """Delete a schedule; return whether it existed. Tasks it enqueued stay."""
        rows = await self.database.run(
            "DELETE FROM legato_schedules WHERE name = ? RETURNING name", (name,)
        )
        return bool(rows)

    async def get(self, name: str) -> ScheduleRecord | None:
        """Return one schedule, or None."""
        rows = await self.database.run(
            f"SELECT {_COLUMNS} FROM legato_schedules WHERE name = ?", (name,)
        )
        return _record(rows[0]) if rows else None

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Return every schedule, by name."""
        rows = await self.database.run(f"SELECT {_COLUMNS} FROM legato_schedules ORDER BY name")
        return [_record(row) for row in rows]

    async def due(self, now: float, limit: int = 100) -> list[ScheduleRecord]:
        """Return enabled schedules whose next tick is at or before `now`, earliest first."""
        rows = await self.database.run(
            f"SELECT {_COLUMNS} FROM legato_schedules WHERE enabled = ? AND next_run_at <= ? "
            "ORDER BY next_run_at LIMIT ?",
            (True, now, limit),
        )
        return [_record(row) for row in rows]

    async def fire(
        self,
        name: str,
        seen_next_run_at: float,
        tick: float,
        next_run_at: float,
        task: NewTask,
        now: float,
    ) -> int | None:
        """Fire `tick` of schedule `name` and enqueue `task`, atomically.

        The schedule moves from `seen_next_run_at` (what the caller read) to `next_run_at`
        and records `tick` as its last run. Returns the new task's id, or None when another
        scheduler already fired this tick (or the schedule changed or vanished meanwhile):
        then nothing is written.
        """
        async with self.database.transaction() as tx:
            moved = await tx.fetch(
                "UPDATE legato_schedules SET next_run_at = ?, last_run_at = ? "
                "WHERE name = ? AND next_run_at = ? AND enabled = ? RETURNING name",
                (next_run_at, tick, name, seen_next_run_at, True),
            )
            if not moved:
                return None
            submitted = (await self._tasks.submit_in(tx, [task], now))[0]
            return submitted.task_id if submitted.created else None
