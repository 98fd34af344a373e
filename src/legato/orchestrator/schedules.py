"""Schedules: interval and cron schedules that enqueue exactly one task per tick.

scheduler = Scheduler(app)
await scheduler.create("nightly-report", "reports.build", cron="0 2 * * *", timezone="UTC")
await scheduler.create("heartbeat-check", "ops.check", every=30.0)
supervisor.add_loop("scheduler", scheduler.tick, interval=1.0)

`tick()` is one pass: every due schedule fires its latest due tick in one transaction
(the conditional advance of `next_run_at` plus the task, keyed by schedule and tick), so
any number of schedulers in any number of processes enqueue one task per tick between them.

Missed ticks (the schedulers were all down, or one pass fell behind): the schedule fires
once, for the latest tick that is due, and moves on to the first tick after now. Older
missed ticks are skipped, not replayed: after a night of downtime an every-minute schedule
enqueues one task, not 600. See docs/concepts/schedules.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from croniter import croniter

from legato.kernel.errors import ValidationError
from legato.store.schedule_store import ScheduleRecord, ScheduleStore

if TYPE_CHECKING:
    from legato.orchestrator.app import Orchestrator

__all__ = ["Scheduler", "latest_due_tick", "next_tick"]

_log = structlog.get_logger(__name__)

_MAX_NAME_LENGTH = 200


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as error:
        raise ValidationError(
            "timezone", timezone, "an IANA time zone name such as 'UTC' or 'America/New_York'"
        ) from error


def next_tick(schedule: ScheduleRecord, after: float) -> float:
    """The first tick of `schedule` strictly after `after` (POSIX seconds).

    Interval ticks are anchored on the schedule's current `next_run_at`, so they keep their
    phase; cron ticks follow the expression in the schedule's time zone (DST included).
    """
    if schedule.interval_seconds is not None:
        # Ticks are anchor + k * interval for every integer k; take the first after `after`.
        interval = schedule.interval_seconds
        anchor = schedule.next_run_at
        return anchor + (math.floor((after - anchor) / interval) + 1) * interval
    assert schedule.cron is not None
    start = datetime.fromtimestamp(after, tz=_zone(schedule.timezone))
    found: datetime = croniter(schedule.cron, start).get_next(datetime)
    return found.timestamp()


def latest_due_tick(schedule: ScheduleRecord, now: float) -> float:
    """The latest tick of `schedule` at or before `now` (its `next_run_at` must be due)."""
    if schedule.interval_seconds is not None:
        interval = schedule.interval_seconds
        missed = math.floor((now - schedule.next_run_at) / interval)
        return schedule.next_run_at + max(0, missed) * interval
    assert schedule.cron is not None
    upcoming = datetime.fromtimestamp(next_tick(schedule, now), tz=_zone(schedule.timezone))
    previous: datetime = croniter(schedule.cron, upcoming).get_prev(datetime)
    return max(previous.timestamp(), schedule.next_run_at)


class Scheduler:
    """Create, change and delete schedules, and fire their due ticks (`tick`, a loop body).

    Any number of schedulers may run against one store: each tick enqueues one task.
    """

    def __init__(self, app: Orchestrator, *, batch: int = 100) -> None:
        if not isinstance(batch, int) or batch < 1:
            raise ValidationError("batch", batch, "an int >= 1")
        self.app = app
        self.batch = batch
        self._store: ScheduleStore | None = None

    @property
    def store(self) -> ScheduleStore:
        """The schedule store on the app's open database."""
        database = self.app.store.database
        if self._store is None or self._store.database is not database:
            self._store = ScheduleStore(database)
        return self._store

    # ------------------------------------------------------------ define

    def _build(
        self,
        name: str,
        task: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        every: float | timedelta | None,
        cron: str | None,
        timezone: str,
        start_at: datetime | None,
        queue: str | None,
        enabled: bool,
    ) -> ScheduleRecord:
        if not isinstance(name, str) or not name or len(name) > _MAX_NAME_LENGTH:
            raise ValidationError(
                "name", name, f"a non-empty str of at most {_MAX_NAME_LENGTH} chars"
            )
        if (every is None) == (cron is None):
            raise ValidationError("every", every, "exactly one of every= or cron=")
        interval: float | None = None
        if every is not None:
            interval = every.total_seconds() if isinstance(every, timedelta) else every
            if (
                not isinstance(interval, int | float)
                or isinstance(interval, bool)
                or not math.isfinite(interval)
                or interval <= 0
            ):
                raise ValidationError("every", every, "seconds > 0 (a number or a timedelta)")
            interval = float(interval)
        if cron is not None and (not isinstance(cron, str) or not croniter.is_valid(cron)):
            raise ValidationError("cron", cron, "a cron expression such as '*/5 * * * *'")
        _zone(timezone)
        if start_at is not None and (not isinstance(start_at, datetime) or start_at.tzinfo is None):
            raise ValidationError("start_at", start_at, "an aware datetime (with a timezone)")
        # Validates the task name and its arguments exactly as a submission would.
        call = self.app.call(task, *args, queue=queue, kwargs=kwargs)
        now = self.app.clock.timestamp()
        record = ScheduleRecord(
            name=name,
            task_name=call.task.name,
            queue=call.task.queue,
            payload=call.task.payload,
            interval_seconds=interval,
            cron=cron,
            timezone=timezone,
            next_run_at=now if interval is None else now + interval,
            last_run_at=None,
            enabled=bool(enabled),
        )
        if start_at is not None:
            first = start_at.timestamp()
            if cron is not None:
                first = next_tick(record, first - 1e-6)
            return replace(record, next_run_at=first)
        if cron is not None:
            return replace(record, next_run_at=next_tick(record, now))
        return record

    async def create(
        self,
        name: str,
        task: str,
        *args: Any,
        every: float | timedelta | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        start_at: datetime | None = None,
        queue: str | None = None,
        enabled: bool = True,
        **kwargs: Any,
    ) -> ScheduleRecord:
        """Create schedule `name`: enqueue `task(*args, **kwargs)` every tick.

        Give `every` (seconds or a timedelta; the first tick is one interval from now, or
        `start_at`) or `cron` (5-field expression, evaluated in `timezone`). Raises
        ValidationError, naming the field, for a taken name or any invalid option.
        """
        record = self._build(
            name, task, args, kwargs, every, cron, timezone, start_at, queue, enabled
        )
        await self.store.create(record)
        return record

    async def update(
        self,
        name: str,
        task: str,
        *args: Any,
        every: float | timedelta | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        start_at: datetime | None = None,
        queue: str | None = None,
        enabled: bool = True,
        **kwargs: Any,
    ) -> ScheduleRecord:
        """Replace schedule `name` with new options (as `create`); its next tick is recomputed.

        A scheduler that read the old next tick cannot fire it any more: the advance is
        conditional on the value it read.
        """
        record = self._build(
            name, task, args, kwargs, every, cron, timezone, start_at, queue, enabled
        )
        await self.store.replace(record)
        return record

    async def delete(self, name: str) -> bool:
        """Delete schedule `name`; return whether it existed."""
        return await self.store.delete(name)

    async def get(self, name: str) -> ScheduleRecord | None:
        """Return schedule `name`, or None."""
        return await self.store.get(name)

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Return every schedule, by name."""
        return await self.store.list_schedules()

    # ------------------------------------------------------------ fire

    async def tick(self) -> int:
        """One scheduler pass: fire every due schedule's latest due tick; return tasks enqueued.

        Use it as a Supervisor loop body: `supervisor.add_loop("scheduler", scheduler.tick,
        interval=1.0)`. The interval bounds how late a tick can fire.
        """
        clock = self.app.clock
        now = clock.timestamp()
        enqueued = 0
        for schedule in await self.store.due(now, self.batch):
            tick = latest_due_tick(schedule, now)
            following = next_tick(replace(schedule, next_run_at=tick), now)
            arguments = json.loads(schedule.payload)
            call = self.app.call(
                schedule.task_name,
                *arguments.get("args", []),
                kwargs=arguments.get("kwargs", {}),
                queue=schedule.queue,
                run_at=tick,
                idempotency_key=f"schedule:{schedule.name}:{round(tick * 1000)}",
            )
            task_id = await self.store.fire(
                schedule.name, schedule.next_run_at, tick, following, call.task, now
            )
            if task_id is None:
                continue
            enqueued += 1
            if tick != schedule.next_run_at:
                _log.warning(
                    "missed schedule ticks skipped",
                    schedule=schedule.name,
                    first_missed=schedule.next_run_at,
                    fired_for=tick,
                )
        if enqueued:
            self.app.wake_local_workers()
        return enqueued
