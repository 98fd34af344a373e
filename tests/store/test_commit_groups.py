"""Group commit of concurrent submits, on SQLite and PostgreSQL (see conftest.store_url).

Concurrent submits pile up only while a write is in flight. To make that happen at a
known moment, each test holds the store's connection in a transaction of its own while
its submits arrive: the first caller waits for the connection (it leads), the others
queue behind it, and when the test lets go they are written in as few transactions as the
group's limit allows. Counts come from the group's stats, never from timing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
import pytest

from legato.kernel.clock import Clock
from legato.kernel.simulation import SimulatedClock
from legato.store import NewTask, PostgresDatabase, StoreUnavailableError, Submitted, TaskStore
from legato.store.commit_groups import CommitGroup, CommitGroupStats
from legato.store.task_store import SUBMIT_GROUP_LIMIT

OpenStore = Callable[[Clock], AbstractAsyncContextManager[TaskStore]]
SubmitCall = tuple[Sequence[NewTask], float]

Until = Callable[[Callable[[], bool]], Awaitable[None]]
ConnectionHeld = Callable[[TaskStore], AbstractAsyncContextManager[None]]


def new_task(name: str, *, key: str | None = None, queue: str = "default") -> NewTask:
    return NewTask(
        name=name,
        queue=queue,
        payload='{"args":[],"kwargs":{}}',
        priority=0,
        run_at=0.0,
        retry="{}",
        idempotency_key=key,
    )


def submit_each(
    store: TaskStore, batches: Sequence[Sequence[NewTask]]
) -> list[asyncio.Task[list[Submitted]]]:
    return [asyncio.create_task(store.submit(tasks, now=5.0)) for tasks in batches]


async def names_by_id(store: TaskStore) -> dict[int, str]:
    return {record.task_id: record.name for record in await store.list_tasks(limit=10_000)}


async def test_concurrent_submits_share_one_commit_and_each_caller_gets_its_own_ids(
    open_store: OpenStore,
    clock: Clock,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    async with open_store(clock) as store:
        async with connection_held(store):
            calls = submit_each(store, [[new_task(f"job-{n}")] for n in range(20)])
            await until(lambda: store.submit_group.stats.calls == 20)
        results = await asyncio.gather(*calls)
        stats = store.submit_group.stats
        # The first caller waited for the connection alone; the other 19 shared the next.
        assert (stats.transactions, stats.batches, stats.largest) == (2, 1, 19)
        ids = [result[0].task_id for result in results]
        assert all(result[0].created for result in results)
        assert len(set(ids)) == 20
        stored = await names_by_id(store)
        assert {task_id: stored[task_id] for task_id in ids} == {
            task_id: f"job-{n}" for n, task_id in enumerate(ids)
        }
        assert len(stored) == 20
        # Ids follow the order the submits were made in (FIFO within a priority).
        assert ids == sorted(ids)


async def test_batch_submits_ride_together_up_to_the_limit(
    open_store: OpenStore,
    clock: Clock,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    size = SUBMIT_GROUP_LIMIT // 2
    batches = [[new_task(f"b{b}-{n}") for n in range(size)] for b in range(5)]
    async with open_store(clock) as store:
        async with connection_held(store):
            calls = submit_each(store, batches)
            await until(lambda: store.submit_group.stats.calls == 5)
        results = await asyncio.gather(*calls)
        # Leader alone, then two transactions of two batches each (the limit in tasks).
        assert store.submit_group.stats.transactions == 3
        assert store.submit_group.stats.largest == 2
        stored = await names_by_id(store)
        for tasks, submitted in zip(batches, results, strict=True):
            assert [stored[s.task_id] for s in submitted] == [t.name for t in tasks]
        assert len(stored) == 5 * size


async def test_a_taken_idempotency_key_in_a_batch_returns_the_existing_task_alone(
    open_store: OpenStore,
    clock: Clock,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    async with open_store(clock) as store:
        existing = (await store.submit([new_task("old", key="order-1")], now=1.0))[0]
        async with connection_held(store):
            calls = submit_each(
                store,
                [
                    [new_task("lead")],
                    [new_task("a")],
                    [new_task("again", key="order-1")],
                    [new_task("twin-1", key="twin")],
                    [new_task("b")],
                    [new_task("twin-2", key="twin")],
                ],
            )
            await until(lambda: store.submit_group.stats.calls == 7)
        lead, a, again, twin_1, b, twin_2 = [(await call)[0] for call in calls]
        assert store.submit_group.stats.batches == 1
        assert again == Submitted(existing.task_id, created=False)
        # Two submits with one new key in the same batch: one task, the first one wins.
        assert twin_1.created
        assert not twin_2.created
        assert twin_2.task_id == twin_1.task_id
        stored = await names_by_id(store)
        assert sorted(stored.values()) == ["a", "b", "lead", "old", "twin-1"]
        assert [stored[s.task_id] for s in (lead, a, b)] == ["lead", "a", "b"]


async def _run_ddl(store: TaskStore, *statements: str) -> None:
    async with store.database.transaction() as tx:
        for statement in statements:
            await tx.execute(statement)


async def _forbid_queue(store: TaskStore, queue: str) -> None:
    # A rule the callers cannot check before writing: only the database knows it.
    if store.database.dialect == "postgresql":
        await _run_ddl(
            store,
            "ALTER TABLE legato_tasks DROP CONSTRAINT IF EXISTS test_forbidden_queue",
            "ALTER TABLE legato_tasks ADD CONSTRAINT test_forbidden_queue "
            f"CHECK (queue <> '{queue}')",
        )
    else:
        await _run_ddl(
            store,
            "CREATE TRIGGER test_forbidden_queue BEFORE INSERT ON legato_tasks "
            f"WHEN NEW.queue = '{queue}' BEGIN SELECT RAISE(ABORT, 'forbidden queue'); END",
        )


async def _allow_queues(store: TaskStore) -> None:
    if store.database.dialect == "postgresql":
        await _run_ddl(
            store, "ALTER TABLE legato_tasks DROP CONSTRAINT IF EXISTS test_forbidden_queue"
        )


async def test_an_item_the_database_rejects_fails_alone_and_the_others_land(
    open_store: OpenStore,
    clock: Clock,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    async with open_store(clock) as store:
        await _forbid_queue(store, "forbidden")
        try:
            async with connection_held(store):
                calls = submit_each(
                    store,
                    [
                        [new_task("lead")],
                        [new_task("a"), new_task("a2")],
                        [new_task("bad-1"), new_task("bad-2", queue="forbidden")],
                        [new_task("b", key="k-b")],
                    ],
                )
                await until(lambda: store.submit_group.stats.calls == 4)
            results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await _allow_queues(store)
        stats = store.submit_group.stats
        assert stats.rejected == 1
        # Leader, the rejected batch, then each of its three calls alone.
        assert stats.transactions == 5
        lead, a, bad, b = results
        assert isinstance(bad, psycopg.errors.CheckViolation | sqlite3.IntegrityError)
        assert not isinstance(lead, BaseException)
        assert not isinstance(a, BaseException)
        assert not isinstance(b, BaseException)
        stored = await names_by_id(store)
        # The rejected call wrote nothing, not even its valid first task.
        assert sorted(stored.values()) == ["a", "a2", "b", "lead"]
        assert [stored[s.task_id] for s in a] == ["a", "a2"]
        assert stored[b[0].task_id] == "b"


async def test_a_caller_cancelled_while_queued_writes_nothing_and_the_others_land(
    open_store: OpenStore,
    clock: Clock,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    async with open_store(clock) as store:
        async with connection_held(store):
            calls = submit_each(store, [[new_task(f"job-{n}")] for n in range(6)])
            await until(lambda: store.submit_group.stats.calls == 6)
            calls[3].cancel()  # waiting in the queue
            calls[0].cancel()  # the leader, waiting for the connection
            await until(lambda: calls[3].done() and calls[0].done())
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert isinstance(results[3], asyncio.CancelledError)
        landed = {
            n: result[0].task_id for n, result in enumerate(results) if isinstance(result, list)
        }
        assert sorted(landed) == [1, 2, 4, 5]
        stored = await names_by_id(store)
        assert stored == {task_id: f"job-{n}" for n, task_id in landed.items()}


async def test_a_caller_cancelled_while_its_batch_is_in_flight_does_not_disturb_it(
    open_store: OpenStore,
    clock: Clock,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    async with open_store(clock) as store:
        calls: list[asyncio.Task[list[Submitted]]] = []

        def cancel_one(items: Sequence[SubmitCall]) -> None:
            if len(items) > 1:
                calls[2].cancel()  # its write is in this batch, about to be sent

        store.submit_group.on_flush = cancel_one
        async with connection_held(store):
            calls += submit_each(store, [[new_task(f"job-{n}")] for n in range(5)])
            await until(lambda: store.submit_group.stats.calls == 5)
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        others = {n: r[0].task_id for n, r in enumerate(results) if isinstance(r, list)}
        assert sorted(others) == [0, 1, 3, 4]
        stored = await names_by_id(store)
        # The batch committed whole: the cancelled caller's task too (it was already sent),
        # once; every other caller's task once, under the id that caller was given.
        assert sorted(stored.values()) == [f"job-{n}" for n in range(5)]
        assert all(stored[task_id] == f"job-{n}" for n, task_id in others.items())


async def _slow_insert_of(store: TaskStore, name: str) -> None:
    # PostgreSQL: inserting the task called `name` takes half a second, so a batch holding
    # it is still executing (rows inserted, nothing committed) when the test kills it.
    await _run_ddl(
        store,
        "CREATE OR REPLACE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$",
        "DROP TRIGGER IF EXISTS test_slow_insert ON legato_tasks",
        "CREATE TRIGGER test_slow_insert BEFORE INSERT ON legato_tasks FOR EACH ROW "
        f"WHEN (NEW.name = '{name}') EXECUTE FUNCTION test_slow_insert()",
    )


async def _no_slow_insert(store: TaskStore) -> None:
    await _run_ddl(store, "DROP TRIGGER IF EXISTS test_slow_insert ON legato_tasks")


async def test_a_connection_lost_mid_batch_leaves_no_batch_half_written(
    open_store: OpenStore,
    store_url: str,
    clock: SimulatedClock,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    size = SUBMIT_GROUP_LIMIT // 2
    batches = [[new_task(f"c{b}-{n}") for n in range(size)] for b in range(7)]
    postgres = store_url.startswith("postgresql")
    sent: list[list[str]] = []
    crashes: list[asyncio.Task[None]] = []

    async def crash(store: TaskStore) -> None:
        if not postgres:
            await store.database.close()  # SQLite: the file's connection is gone
            return
        assert isinstance(store.database, PostgresDatabase)
        (pid,) = await store.database.backend_pids()
        async with clock.real_io():  # the server kills the connection mid-statement
            admin = await psycopg.AsyncConnection.connect(store_url, autocommit=True)
            try:
                await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            finally:
                await admin.close()

    async with open_store(clock) as store:

        def crash_on_first_batch(items: Sequence[SubmitCall]) -> None:
            sent.append([task.name for tasks, _ in items for task in tasks])
            if len(items) > 1 and not crashes:
                crashes.append(asyncio.create_task(crash(store)))

        if postgres:
            await _slow_insert_of(store, "c2-0")
        try:
            store.submit_group.on_flush = crash_on_first_batch
            async with connection_held(store):
                calls = submit_each(store, batches)
                await until(lambda: store.submit_group.stats.calls == len(batches))
            results: list[Any] = await asyncio.gather(*calls, return_exceptions=True)
            await crashes[0]
        finally:
            if postgres:
                await _no_slow_insert(store)
    if postgres:
        # The first shared batch (callers 1 and 2) was executing when its connection died.
        assert isinstance(results[1], StoreUnavailableError)
        assert isinstance(results[2], StoreUnavailableError)
    else:
        # SQLite's statements never yield: the batch committed, the ones after it failed.
        assert isinstance(results[3], StoreUnavailableError)
    async with open_store(clock) as reopened:
        stored = await names_by_id(reopened)
    names = list(stored.values())
    assert len(names) == len(set(names))  # nothing written twice
    present = set(names)
    for transaction in sent:
        # Every transaction sent committed whole or not at all.
        assert present.issuperset(transaction) or present.isdisjoint(transaction)
    for tasks, result in zip(batches, results, strict=True):
        if isinstance(result, list):  # a caller told "written" finds every task, by its id
            assert [stored[s.task_id] for s in result] == [t.name for t in tasks]
        else:  # a caller told "failed" finds none of them (here, where nothing committed)
            assert present.isdisjoint(t.name for t in tasks)


async def test_close_writes_the_queued_submits_first_then_refuses_new_ones(
    open_store: OpenStore,
    clock: Clock,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    async with open_store(clock) as store:
        async with connection_held(store):
            calls = submit_each(store, [[new_task(f"job-{n}")] for n in range(4)])
            await until(lambda: store.submit_group.stats.calls == 4)
            draining = asyncio.create_task(store.submit_group.drain())
            await asyncio.sleep(0)
            with pytest.raises(StoreUnavailableError):
                await store.submit([new_task("late")], now=6.0)
            assert not draining.done()
        await draining
        assert all(call.done() and not call.exception() for call in calls)
        assert sorted((await names_by_id(store)).values()) == [f"job-{n}" for n in range(4)]


async def test_close_also_waits_for_a_submit_too_big_to_share(
    open_store: OpenStore,
    clock: Clock,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    big = [new_task(f"big-{n}") for n in range(SUBMIT_GROUP_LIMIT + 1)]
    async with open_store(clock) as store:
        async with connection_held(store):
            call = asyncio.create_task(store.submit(big, now=5.0))
            await until(lambda: store.submit_group.stats.calls == 1)
            draining = asyncio.create_task(store.submit_group.drain())
            await asyncio.sleep(0)
            assert not draining.done()
        await draining
        assert call.done()
        assert len(call.result()) == len(big)
        assert store.submit_group.stats.batches == 0


async def test_a_lone_caller_writes_at_once_in_its_own_transaction(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        for n in range(3):
            await store.submit([new_task(f"job-{n}")], now=1.0)
        assert store.submit_group.stats == CommitGroupStats(
            calls=3, transactions=3, batches=0, batched_calls=0, rejected=0, largest=1
        )


def test_a_group_limit_below_one_is_rejected() -> None:
    from legato.kernel.errors import ValidationError

    async def write_one(item: int) -> int:
        return item

    async def write_many(items: Sequence[int]) -> list[int]:
        return list(items)

    with pytest.raises(ValidationError) as raised:
        CommitGroup(write_one, write_many, limit=0)
    assert raised.value.field == "limit"
