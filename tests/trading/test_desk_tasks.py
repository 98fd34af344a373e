"""A desk scheduled by the orchestrator: one durable `legato.desk.decide` task per bar."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from legato.kernel.clock import Clock
from legato.orchestrator.app import Orchestrator
from legato.store.records import TaskRecord, TaskState, WorkerRecord
from legato.trading.decision_log import DecisionLog, PipelineStatus
from legato.trading.desk import Desk
from legato.trading.desk_tasks import DECIDE_QUEUE, DECIDE_TASK, Scheduling, decide_key
from legato.trading.ledger import OrderRole, TradingLedger
from legato.trading.market_data import Bar

from .agents.scripted_bars import SYMBOL, trend
from .desk_harness import empty_desk_tables, scripted_desk_config

# Ten virtual seconds a bar: each decision (and its bracket) ends before the next bar.
CONFIG = scripted_desk_config(speed=30.0)


@pytest.fixture
def desk_url(store_url: str) -> str:
    """An empty, migrated store on each backend."""
    empty_desk_tables(store_url)
    return store_url


async def _decide_tasks(url: str, clock: Clock) -> list[TaskRecord]:
    async with Orchestrator(url, clock=clock, upgrade=False) as app:
        listed = await app.list_tasks(queue=DECIDE_QUEUE, limit=10_000)
        return [
            record
            for task in listed
            if (record := await app.get_task(task.task_id)) is not None
            and record.name == DECIDE_TASK
        ]


def _result(record: TaskRecord) -> dict[str, Any]:
    assert record.result is not None, record
    result: dict[str, Any] = json.loads(record.result)
    return result


async def _stored(url: str, clock: Clock) -> tuple[list[Any], list[Any]]:
    ledger = await TradingLedger.open(url, upgrade=False, clock=clock)
    try:
        decisions = await DecisionLog(ledger.database).decisions(limit=10_000)
        entries = [r for r in await ledger.orders() if r.role is OrderRole.ENTRY]
    finally:
        await ledger.close()
    return decisions, entries


async def test_every_bar_is_a_succeeded_decide_task_with_its_decision_stored(
    clock: Clock, desk_url: str
) -> None:
    bars = trend(72, drift=0.003)
    desk = _scheduled_desk(desk_url, clock, bars)
    assert await desk.run() == 72
    tasks = await _decide_tasks(desk_url, clock)
    decisions, entries = await _stored(desk_url, clock)

    # One task per bar, keyed by the bar and this run, every one succeeded: nothing left
    # running.
    run = tasks[0].idempotency_key.rpartition("#")[2]
    assert run
    assert [t.idempotency_key for t in tasks] == [
        decide_key(SYMBOL, bar.timestamp.isoformat(), run) for bar in bars
    ]
    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    results = [_result(t) for t in tasks]
    assert [r["bar_time"] for r in results] == [bar.timestamp.isoformat() for bar in bars]
    # Each bar past the indicators' warm-up was decided, and its decision is in the log.
    decided = [r for r in results if r["status"] == "decided"]
    assert {r["status"] for r in results} == {"warming_up", "decided"}
    assert {r["key"] for r in decided} == {d.key for d in decisions}
    assert len(decisions) == len(decided) > 0
    by_key = {d.key: d for d in decisions}
    assert all(by_key[r["key"]].status.value == r["decision"] for r in decided)
    # The same trade as the inline desk makes on this market: one protected entry.
    assert [d.status for d in decisions].count(PipelineStatus.EXECUTED) == 1
    assert len(entries) == 1
    # The history of a task says who ran it and when.
    history = tasks[-1].history
    assert [event.to_state for event in history][-2:] == [TaskState.RUNNING, TaskState.SUCCEEDED]
    assert history[-1].worker_id is not None


async def test_concurrent_submissions_of_one_bar_decide_it_once_and_trade_at_most_once(
    clock: Clock, desk_url: str
) -> None:
    # The desk observes the bars (no decision of its own: a huge risk budget would be
    # wasted), then the same bars are submitted many times at once, with and without the key.
    bars = trend(72, drift=0.003)
    seen: list[Bar] = []
    desk = _scheduled_desk(desk_url, clock)
    await desk.start()
    try:
        tasks = desk._tasks
        assert tasks is not None
        last = bars[-1]
        for bar in bars[:-1]:
            desk.coordinator.observe(bar)
            seen.append(bar)
        snapshot = desk.coordinator.observe(last)
        await tasks.submit(snapshot)
        bar_time = last.timestamp.isoformat()
        app = tasks.app
        submissions = [
            *(
                app.submit(
                    DECIDE_TASK, SYMBOL, bar_time, idempotency_key=tasks.key(SYMBOL, bar_time)
                )
                for _ in range(10)
            ),
            # Not deduplicated by the store: ten distinct tasks racing for the same bar.
            *(app.submit(DECIDE_TASK, SYMBOL, bar_time) for _ in range(10)),
            # Older bars of the same symbol, in the same burst.
            *(app.submit(DECIDE_TASK, SYMBOL, bar.timestamp.isoformat()) for bar in seen[-5:]),
        ]
        ids = await asyncio.gather(*submissions)
        keyed = set(ids[:10])
        assert len(keyed) == 1
        await _until_ended(app, set(ids), clock)
    finally:
        await desk.stop()
    records = await _decide_tasks(desk_url, clock)
    decisions, entries = await _stored(desk_url, clock)
    assert {r.state for r in records} == {TaskState.SUCCEEDED}
    results = {r.task_id: _result(r) for r in records}
    last_runs = [results[i] for i in (*keyed, *ids[10:20])]
    # One run decided the bar; the others found it decided (or queued behind it).
    assert sorted(r["status"] for r in last_runs).count("decided") == 1
    assert {r["status"] for r in last_runs} <= {"decided", "duplicate"}
    older = [results[i] for i in ids[20:]]
    assert {r["status"] for r in older} == {"stale"}
    assert [d.key for d in decisions] == [f"{SYMBOL}@{bar_time}"]
    assert len(entries) <= 1


async def _until_ended(app: Orchestrator, ids: set[int], clock: Clock) -> None:
    # Polls on virtual time; the deadline turns "never ended" into a failure.
    deadline = clock.monotonic() + 600
    while clock.monotonic() < deadline:
        records = [await app.get_task(task_id) for task_id in ids]
        if all(r is not None and r.state.terminal for r in records):
            return
        await clock.sleep(1)
    raise AssertionError("the decide tasks did not all end")


async def test_a_task_for_a_bar_older_than_the_latest_is_skipped_as_stale(
    clock: Clock, desk_url: str
) -> None:
    bars = trend(80, drift=0.003)
    desk = _scheduled_desk(desk_url, clock)
    await desk.start()
    try:
        tasks = desk._tasks
        assert tasks is not None
        for bar in bars[:-1]:
            desk.coordinator.observe(bar)
        # A pending task of an old bar (say, left from before a restart) and the newest bar.
        old = bars[-10].timestamp.isoformat()
        stale_id = await tasks.app.submit(DECIDE_TASK, SYMBOL, old)
        await _until_ended(tasks.app, {stale_id}, clock)
    finally:
        await desk.stop()
    record = await _ended_stale_without_trading(desk_url, clock, stale_id)
    assert "not the latest bar" in _result(record)["detail"]


async def test_a_stopped_desk_leaves_no_decide_task_running_or_pending(
    clock: Clock, desk_url: str
) -> None:
    desk = _scheduled_desk(desk_url, clock, trend(85, drift=0.003))

    async def operator() -> None:
        await clock.sleep(10 * 75 + 5)
        desk.request_stop()

    async with asyncio.TaskGroup() as group:
        group.create_task(operator())
        await desk.run()
    records = await _decide_tasks(desk_url, clock)
    assert records
    assert {r.state for r in records} == {TaskState.SUCCEEDED}


async def test_a_task_left_running_by_a_killed_desk_is_reaped_and_ends_stale(
    clock: Clock, desk_url: str
) -> None:
    bars = trend(72, drift=0.003)
    bar_time = bars[10].timestamp.isoformat()
    # A desk killed mid-decision: its worker claimed the bar's task and never came back.
    async with Orchestrator(desk_url, clock=clock, upgrade=False) as killed:
        submitted = await killed.store.submit(
            [
                killed.call(
                    _registered_decide(killed),
                    SYMBOL,
                    bar_time,
                    queue=DECIDE_QUEUE,
                    idempotency_key=decide_key(SYMBOL, bar_time, "killed-desk"),
                ).task
            ],
            clock.timestamp(),
        )
        task_id = submitted[0].task_id
        await killed.store.register_worker(_dead_worker(clock))
        _, leases = await killed.store.complete_and_claim(
            [], "killed-desk", (DECIDE_QUEUE,), 1, clock.timestamp(), 30.0, None, (DECIDE_TASK,)
        )
    assert [lease.task_id for lease in leases] == [task_id]
    desk = _scheduled_desk(desk_url, clock)
    await desk.start()
    try:
        tasks = desk._tasks
        assert tasks is not None
        # The next desk has observed newer bars by the time the lease runs out.
        for bar in bars:
            desk.coordinator.observe(bar)
        await _until_ended(tasks.app, {task_id}, clock)
    finally:
        await desk.stop()
    await _ended_stale_without_trading(desk_url, clock, task_id)


def _scheduled_desk(desk_url: str, clock: Clock, bars: Sequence[Bar] = ()) -> Desk:
    """The test desk, its decisions run as orchestrator tasks."""
    return Desk(
        CONFIG, store_url=desk_url, clock=clock, bars=list(bars), scheduling=Scheduling.ORCHESTRATOR
    )


async def _ended_stale_without_trading(desk_url: str, clock: Clock, task_id: int) -> TaskRecord:
    """Check that decide task `task_id` ended stale, with no decision and no order; return it."""
    (record,) = [r for r in await _decide_tasks(desk_url, clock) if r.task_id == task_id]
    decisions, entries = await _stored(desk_url, clock)
    assert record.state is TaskState.SUCCEEDED
    assert _result(record)["status"] == "stale"
    assert decisions == []
    assert entries == []
    return record


def _registered_decide(app: Orchestrator) -> str:
    async def decide(symbol: str, bar_time: str) -> None:  # never runs: its worker is dead
        raise AssertionError((symbol, bar_time))

    app.task(name=DECIDE_TASK, queue=DECIDE_QUEUE)(decide)
    return DECIDE_TASK


def _dead_worker(clock: Clock) -> WorkerRecord:
    now = clock.timestamp()
    return WorkerRecord(
        worker_id="killed-desk",
        host="gone",
        pid=1,
        queues=(DECIDE_QUEUE,),
        resources="{}",
        concurrency=4,
        version="0",
        state="active",
        started_at=now,
        heartbeat_at=now,
    )


async def test_a_bar_fed_again_after_a_restart_gets_a_task_of_its_own_and_one_decision(
    clock: Clock, desk_url: str
) -> None:
    # A bar whose task ended in an earlier run (say `skipped` while that desk stopped) is
    # fed again when the next run resumes after the last decided bar: the new run's key
    # differs, so the bar gets a new task; the decision log still stores one decision.
    bars = trend(72, drift=0.003)
    bar_time = bars[-1].timestamp.isoformat()
    ids: list[int] = []
    runs: list[str] = []
    for _ in range(2):
        desk = _scheduled_desk(desk_url, clock)
        await desk.start()
        try:
            tasks = desk._tasks
            assert tasks is not None
            runs.append(tasks.run_name)
            for bar in bars[:-1]:
                desk.coordinator.observe(bar)
            snapshot = desk.coordinator.observe(bars[-1])
            ids.append(await tasks.submit(snapshot))
            # Submitting the same bar again in the same run is the same task.
            assert await tasks.submit(snapshot) == ids[-1]
            await _until_ended(tasks.app, {ids[-1]}, clock)
        finally:
            await desk.stop()
        await clock.sleep(60)
    assert runs[0] != runs[1]
    assert ids[0] != ids[1]
    records = {r.task_id: r for r in await _decide_tasks(desk_url, clock)}
    statuses = [_result(records[task_id])["status"] for task_id in ids]
    assert statuses == ["decided", "duplicate"]
    decisions, _ = await _stored(desk_url, clock)
    assert [d.key for d in decisions] == [f"{SYMBOL}@{bar_time}"]
