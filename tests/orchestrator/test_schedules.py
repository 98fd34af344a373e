"""Schedules on both backends: tick computation, exactly one task per tick, missed ticks."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.kernel.supervisor import Supervisor
from legato.orchestrator import Orchestrator
from legato.orchestrator.schedules import Scheduler, latest_due_tick, next_tick
from legato.store.schedule_store import ScheduleRecord


def schedule(
    *, every: float | None = None, cron: str | None = None, tz: str = "UTC", next_run_at: float
) -> ScheduleRecord:
    return ScheduleRecord(
        name="s",
        task_name="t",
        queue="default",
        payload="{}",
        interval_seconds=every,
        cron=cron,
        timezone=tz,
        next_run_at=next_run_at,
        last_run_at=None,
        enabled=True,
    )


def at(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("*/15 * * * *", "2026-01-05 10:07:00", "2026-01-05 10:15:00"),
        ("*/15 * * * *", "2026-01-05 10:15:00", "2026-01-05 10:30:00"),  # strictly after
        ("0 2 * * *", "2026-01-05 03:00:00", "2026-01-06 02:00:00"),
        ("30 9 * * mon-fri", "2026-01-09 10:00:00", "2026-01-12 09:30:00"),  # Friday -> Monday
    ],
)
def test_cron_next_tick_is_the_first_match_strictly_after(
    cron: str, after: str, expected: str
) -> None:
    assert next_tick(schedule(cron=cron, next_run_at=0), at(after)) == at(expected)


def test_cron_ticks_follow_the_schedule_time_zone_across_daylight_saving() -> None:
    record = schedule(cron="0 9 * * *", tz="America/New_York", next_run_at=0)
    before = next_tick(record, at("2026-03-06 12:00:00", "America/New_York"))
    after = next_tick(record, before)
    # 09:00 local both days, though the UTC offset changed overnight (EST to EDT).
    assert datetime.fromtimestamp(before, UTC).hour == 14
    assert datetime.fromtimestamp(after, UTC).hour == 13
    assert after - before == 23 * 3600


def test_interval_ticks_keep_their_phase() -> None:
    record = schedule(every=60, next_run_at=1_000.0)
    assert next_tick(record, 1_000.0) == 1_060.0
    assert next_tick(record, 1_130.5) == 1_180.0
    assert latest_due_tick(record, 1_130.5) == 1_120.0
    assert latest_due_tick(record, 1_000.0) == 1_000.0


def test_the_latest_due_cron_tick_is_the_last_match_at_or_before_now() -> None:
    record = schedule(cron="0 * * * *", next_run_at=at("2026-01-05 01:00:00"))
    assert latest_due_tick(record, at("2026-01-05 07:20:00")) == at("2026-01-05 07:00:00")
    assert latest_due_tick(record, at("2026-01-05 07:00:00")) == at("2026-01-05 07:00:00")


def register_job(app: Orchestrator) -> None:
    @app.task(name="job")
    async def job(label: str = "") -> str:
        return label


async def test_an_interval_schedule_enqueues_one_task_per_tick(
    app: Orchestrator, clock: Clock
) -> None:
    register_job(app)
    scheduler = Scheduler(app)
    async with app:
        created = await scheduler.create("every-minute", "job", "x", every=60)
        for _ in range(3):
            await clock.sleep(60)
            assert await scheduler.tick() == 1
            assert await scheduler.tick() == 0  # nothing more due within the same tick
        tasks = await app.list_tasks()
        stored = await scheduler.get("every-minute")
    assert [t.run_at for t in tasks] == [created.next_run_at + 60 * k for k in range(3)]
    assert [t.payload for t in tasks] == ['{"args":["x"],"kwargs":{}}'] * 3
    assert stored is not None
    assert stored.next_run_at == created.next_run_at + 180
    assert stored.last_run_at == created.next_run_at + 120


async def test_racing_schedulers_enqueue_exactly_one_task_per_tick(
    app: Orchestrator, store_url: str, clock: Clock
) -> None:
    register_job(app)
    # Three schedulers, each on its own connection (as in three processes), racing.
    others = [
        Orchestrator(store_url, clock=clock, rng=random.Random(i), upgrade=False) for i in (1, 2)
    ]
    for other in others:
        register_job(other)
    schedulers = [Scheduler(app), *(Scheduler(other) for other in others)]
    async with app, others[0], others[1]:
        await schedulers[0].create("fast", "job", every=1)
        await schedulers[0].create("cron", "job", cron="* * * * *")
        fired = 0
        for _ in range(120):
            await clock.sleep(1)
            counts = await asyncio.gather(*(s.tick() for s in schedulers))
            fired += sum(counts)
        tasks = await app.list_tasks(limit=1_000)
    keys = [t.idempotency_key for t in tasks]
    assert fired == len(tasks)
    assert len(keys) == len(set(keys))
    fast = sorted(t.run_at for t in tasks if (t.idempotency_key or "").startswith("schedule:fast:"))
    assert len(fast) == 120
    assert all(b - a == 1 for a, b in itertools.pairwise(fast))
    cron = [t for t in tasks if (t.idempotency_key or "").startswith("schedule:cron:")]
    assert len(cron) == 2  # two minute boundaries in 120 seconds


async def test_after_downtime_a_schedule_fires_once_for_the_latest_missed_tick(
    app: Orchestrator, clock: Clock
) -> None:
    register_job(app)
    scheduler = Scheduler(app)
    async with app:
        created = await scheduler.create("minutely", "job", every=60)
        await clock.sleep(10 * 3600 + 30)  # every scheduler was down for ten hours
        assert await scheduler.tick() == 1
        assert await scheduler.tick() == 0
        tasks = await app.list_tasks()
        stored = await scheduler.get("minutely")
    latest = created.next_run_at + 599 * 60
    assert [t.run_at for t in tasks] == [latest]
    assert stored is not None
    assert stored.next_run_at == latest + 60


async def test_schedules_run_as_a_supervised_loop_and_workers_run_their_tasks(
    app: Orchestrator, clock: Clock
) -> None:
    register_job(app)
    scheduler = Scheduler(app)
    async with app:
        await scheduler.create("often", "job", every=timedelta(seconds=5))
        async with Supervisor(clock=clock) as supervisor:
            supervisor.add_loop("scheduler", scheduler.tick, interval=1.0)
            await clock.sleep(26)
        tasks = await app.list_tasks()
    assert len(tasks) == 5


async def test_updating_a_schedule_recomputes_its_next_tick_and_deleting_stops_it(
    app: Orchestrator, clock: Clock
) -> None:
    register_job(app)
    scheduler = Scheduler(app)
    async with app:
        await scheduler.create("s", "job", every=60)
        updated = await scheduler.update("s", "job", "new", cron="0 * * * *")
        assert updated.cron == "0 * * * *"
        assert updated.interval_seconds is None
        assert (await scheduler.get("s")) == updated
        paused = await scheduler.update("s", "job", every=1, enabled=False)
        await clock.sleep(5)
        assert await scheduler.tick() == 0
        assert paused.enabled is False
        assert await scheduler.delete("s") is True
        assert await scheduler.delete("s") is False
        assert await scheduler.list_schedules() == []


async def test_bad_schedules_are_rejected_naming_the_field_and_nothing_is_written(
    app: Orchestrator,
) -> None:
    register_job(app)
    scheduler = Scheduler(app)
    cases: list[tuple[str, dict[str, object]]] = [
        ("every", {}),
        ("every", {"every": 5, "cron": "* * * * *"}),
        ("every", {"every": -1}),
        ("cron", {"cron": "every tuesday"}),
        ("timezone", {"cron": "* * * * *", "timezone": "Mars/Olympus"}),
        ("task", {"every": 5, "task": "unknown"}),
        ("args", {"every": 5, "extra": [object()]}),
    ]
    async with app:
        for field, options in cases:
            task = str(options.pop("task", "job"))
            extra = options.pop("extra", [])
            assert isinstance(extra, list)
            with pytest.raises(ValidationError) as raised:
                await scheduler.create("bad", task, *extra, **options)  # type: ignore[arg-type]
            assert raised.value.field == field, options
        await scheduler.create("taken", "job", every=5)
        with pytest.raises(ValidationError) as taken:
            await scheduler.create("taken", "job", every=5)
        with pytest.raises(ValidationError) as missing:
            await scheduler.update("missing", "job", every=5)
        names = [s.name for s in await scheduler.list_schedules()]
    assert (taken.value.field, missing.value.field) == ("name", "name")
    assert names == ["taken"]


async def test_a_scheduler_that_read_an_already_fired_tick_enqueues_nothing(
    app: Orchestrator, clock: Clock
) -> None:
    register_job(app)
    scheduler = Scheduler(app)
    async with app:
        created = await scheduler.create("s", "job", every=10)
        await clock.sleep(10)
        (seen,) = await scheduler.store.due(clock.timestamp())
        assert await scheduler.tick() == 1  # another scheduler fires the tick first
        # The slow one fires what it read, even under another key: the conditional advance
        # of next_run_at alone refuses it.
        late = app.call("job", idempotency_key="some-other-key").task
        fired = await scheduler.store.fire(
            "s", seen.next_run_at, seen.next_run_at, seen.next_run_at + 10, late, clock.timestamp()
        )
        tasks = await app.list_tasks()
    assert fired is None
    assert [t.run_at for t in tasks] == [created.next_run_at]
