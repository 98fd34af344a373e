"""Behaviour of the task store, identical on SQLite and PostgreSQL (see conftest.store_url)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import psycopg
import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.store import (
    EndReason,
    ExpiredLease,
    NewTask,
    Outcome,
    QueueLimits,
    StaleLeaseError,
    TaskState,
    TaskStore,
    WorkerRecord,
    WorkerState,
)

from .pg_counters import count_from, index_reads

OpenStore = Callable[[Clock], AbstractAsyncContextManager[TaskStore]]


def new_task(
    name: str = "job",
    *,
    queue: str = "default",
    priority: int = 0,
    run_at: float = 0.0,
    key: str | None = None,
    resources: str = "{}",
) -> NewTask:
    return NewTask(
        name=name,
        queue=queue,
        payload='{"args":[],"kwargs":{}}',
        priority=priority,
        run_at=run_at,
        retry="{}",
        resources=resources,
        idempotency_key=key,
    )


def success(task_id: int, token: int) -> Outcome:
    return Outcome(task_id, token, TaskState.SUCCEEDED, "succeeded", result="1")


async def test_submit_returns_ids_in_order_and_records_a_submitted_event(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        submitted = await store.submit([new_task("a"), new_task("b"), new_task("c")], now=10.0)
        assert [s.created for s in submitted] == [True, True, True]
        ids = [s.task_id for s in submitted]
        assert ids == sorted(ids)
        record = await store.get_task(ids[1])
        assert record is not None
        assert (record.name, record.state, record.created_at) == ("b", TaskState.PENDING, 10.0)
        assert [(e.from_state, e.to_state, e.reason) for e in record.history] == [
            (None, TaskState.PENDING, "submitted")
        ]


async def test_a_batch_mixing_int_and_float_times_and_optional_values_keeps_every_value(
    open_store: OpenStore, clock: Clock
) -> None:
    # PostgreSQL takes a batch as binary arrays, one Python type per column: ints where the
    # column is a float, and None next to values, must arrive as given.
    tasks = [
        NewTask("a", "default", "{}", 2, run_at=5, retry="{}", timeout=30),
        NewTask("b", "default", "{}", 0, run_at=6.5, retry="{}", protected=True),
        NewTask("c", "other", "{}", -1, run_at=7, retry="{}", timeout=1.5, idempotency_key="k"),
    ]
    async with open_store(clock) as store:
        ids = [s.task_id for s in await store.submit(tasks, now=10)]
        records = [await store.get_task(task_id, history=False) for task_id in ids]
    assert [
        (r.name, r.queue, r.priority, r.run_at, r.timeout, r.protected, r.idempotency_key)
        for r in records
        if r is not None
    ] == [
        ("a", "default", 2, 5.0, 30.0, False, None),
        ("b", "default", 0, 6.5, None, True, None),
        ("c", "other", -1, 7.0, 1.5, False, "k"),
    ]
    assert {r.created_at for r in records if r is not None} == {10.0}


async def test_existing_idempotency_key_returns_the_existing_task_and_writes_nothing(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        first = (await store.submit([new_task(key="order-1")], now=1.0))[0]
        again = await store.submit([new_task(key="order-1"), new_task(key="order-2")], now=2.0)
        assert again[0].task_id == first.task_id
        assert again[0].created is False
        assert again[1].created is True
        assert sum((await store.count_by_state()).values()) == 2


async def test_duplicate_keys_within_one_batch_create_one_task(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        results = await store.submit([new_task(key="k"), new_task(key="k")], now=1.0)
        assert results[0].task_id == results[1].task_id
        assert [r.created for r in results] == [True, False]


async def test_claim_takes_higher_priority_first_and_fifo_within_a_priority(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        ids = [
            s.task_id
            for s in await store.submit(
                [
                    new_task(priority=0),
                    new_task(priority=5),
                    new_task(priority=0),
                    new_task(priority=5),
                ],
                now=1.0,
            )
        ]
        leases = await store.claim("w", ["default"], 10, now=2.0, lease_seconds=30)
        assert [lease.task_id for lease in leases] == [ids[1], ids[3], ids[0], ids[2]]


async def test_claim_skips_tasks_not_yet_due_and_other_queues(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        due, later, elsewhere = await store.submit(
            [new_task(), new_task(run_at=100.0), new_task(queue="other")], now=1.0
        )
        leases = await store.claim("w", ["default"], 10, now=50.0, lease_seconds=30)
        assert [lease.task_id for lease in leases] == [due.task_id]
        leases = await store.claim("w", ["default"], 10, now=100.0, lease_seconds=30)
        assert [lease.task_id for lease in leases] == [later.task_id]
        assert (await store.get_task(elsewhere.task_id)).state is TaskState.PENDING  # type: ignore[union-attr]


async def test_a_task_is_claimed_by_one_worker_only(open_store: OpenStore, clock: Clock) -> None:
    async with open_store(clock) as store:
        await store.submit([new_task() for _ in range(5)], now=1.0)
        first = await store.claim("w1", ["default"], 3, now=2.0, lease_seconds=30)
        second = await store.claim("w2", ["default"], 10, now=2.0, lease_seconds=30)
        assert len(first) == 3
        assert len(second) == 2
        assert not {lease.task_id for lease in first} & {lease.task_id for lease in second}


async def test_each_claim_increments_the_fencing_token_and_the_attempt(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        (task,) = await store.submit([new_task()], now=1.0)
        (lease1,) = await store.claim("w1", ["default"], 1, now=2.0, lease_seconds=5)
        reaped = await store.reap_expired(
            now=10.0,
            decide=lambda e: Outcome(
                e.task_id, e.fencing_token, TaskState.RETRYING, "lease_expired", run_at=10.0
            ),
        )
        assert [o.task_id for o in reaped] == [task.task_id]
        (lease2,) = await store.claim("w2", ["default"], 1, now=11.0, lease_seconds=5)
        assert (lease2.fencing_token, lease2.attempt) == (lease1.fencing_token + 1, 2)


async def test_a_completion_from_a_stale_lease_is_rejected_and_changes_nothing(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        (task,) = await store.submit([new_task()], now=1.0)
        (old,) = await store.claim("w1", ["default"], 1, now=2.0, lease_seconds=5)
        await store.reap_expired(
            now=10.0,
            decide=lambda e: Outcome(
                e.task_id, e.fencing_token, TaskState.PENDING, "lease_expired"
            ),
        )
        (new,) = await store.claim("w2", ["default"], 1, now=11.0, lease_seconds=5)
        before = await store.get_task(task.task_id)
        with pytest.raises(StaleLeaseError) as raised:
            await store.complete_one(success(task.task_id, old.fencing_token), "w1", now=12.0)
        assert raised.value.task_id == task.task_id
        after = await store.get_task(task.task_id)
        assert after == before
        assert after is not None
        assert (after.state, after.lease_owner) == (TaskState.RUNNING, "w2")
        await store.complete_one(success(task.task_id, new.fencing_token), "w2", now=13.0)
        done = await store.get_task(task.task_id)
        assert done is not None
        assert (done.state, done.result, done.finished_at) == (TaskState.SUCCEEDED, "1", 13.0)


async def test_a_batch_of_completions_accepts_each_current_lease_and_rejects_each_stale_one(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        await store.submit([new_task(), new_task()], now=1.0)
        a, b = await store.claim("w", ["default"], 2, now=2.0, lease_seconds=30)
        accepted = await store.complete(
            [success(a.task_id, a.fencing_token), success(b.task_id, b.fencing_token + 7)], "w", 3.0
        )
        assert accepted == [True, False]
        assert (await store.count_by_state()) == {TaskState.SUCCEEDED: 1, TaskState.RUNNING: 1}


async def test_a_workers_round_lands_each_current_completion_with_its_event_and_refuses_a_stale_one(
    open_store: OpenStore, clock: Clock
) -> None:
    # The worker's group commit: every outcome since its last round plus the next claim,
    # one transaction. A stale token in the middle fails alone; the others land, each with
    # its own history row, and the claim still happens.
    async with open_store(clock) as store:
        *_, last = await store.submit([new_task(), new_task(), new_task(), new_task()], now=1.0)
        a, b, c = await store.claim("w", ["default"], 3, now=2.0, lease_seconds=30)
        outcomes = [
            success(a.task_id, a.fencing_token),
            success(b.task_id, b.fencing_token + 1),
            Outcome(
                c.task_id, c.fencing_token, TaskState.RETRYING, "failed", error="boom", run_at=9.0
            ),
        ]
        accepted, leases = await store.complete_and_claim(
            outcomes, "w", ["default"], 3, now=3.0, lease_seconds=30
        )
        assert accepted == [True, False, True]
        assert [lease.task_id for lease in leases] == [last.task_id]
        expected = {
            a.task_id: (TaskState.SUCCEEDED, a.fencing_token, None),
            c.task_id: (TaskState.RETRYING, c.fencing_token, "boom"),
        }
        for task_id, (state, token, detail) in expected.items():
            record = await store.get_task(task_id)
            assert record is not None
            assert record.state is state
            assert [
                (e.at, e.from_state, e.to_state, e.worker_id, e.fencing_token, e.detail)
                for e in record.history
                if e.from_state is TaskState.RUNNING
            ] == [(3.0, TaskState.RUNNING, state, "w", token, detail)]
        stale = await store.get_task(b.task_id)
        assert stale is not None
        assert (stale.state, stale.lease_owner) == (TaskState.RUNNING, "w")
        assert [e for e in stale.history if e.from_state is TaskState.RUNNING] == []


async def test_heartbeat_extends_held_leases_and_reports_lost_and_cancelled_ones(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        await store.submit([new_task(), new_task()], now=1.0)
        a, b = await store.claim("w", ["default"], 2, now=2.0, lease_seconds=10)
        await store.cancel(b.task_id, now=3.0)
        held = await store.heartbeat(
            "w", {a.task_id: a.fencing_token, b.task_id: b.fencing_token}, now=9.0, lease_seconds=10
        )
        assert held.leases == {a.task_id: False, b.task_id: True}
        assert held.draining is False
        assert await store.reap_expired(now=15.0, decide=pytest.fail) == []
        record = await store.get_task(a.task_id)
        assert record is not None
        assert record.lease_expires_at == 19.0
        lost = await store.heartbeat(
            "w", {a.task_id: a.fencing_token + 1}, now=10.0, lease_seconds=10
        )
        assert lost.leases == {}


async def test_reaper_only_touches_expired_leases_and_passes_what_it_needs_to_decide(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        await store.submit([new_task("short"), new_task("long")], now=1.0)
        (short,) = await store.claim("w1", ["default"], 1, now=2.0, lease_seconds=5)
        (long,) = await store.claim("w2", ["default"], 1, now=2.0, lease_seconds=50)
        seen: list[ExpiredLease] = []

        def decide(expired: ExpiredLease) -> Outcome:
            seen.append(expired)
            return Outcome(
                expired.task_id,
                expired.fencing_token,
                TaskState.DEAD,
                "lease_expired",
                end_reason=EndReason.LEASE_LOST,
            )

        applied = await store.reap_expired(now=10.0, decide=decide, reaper_id="reaper")
        assert [o.task_id for o in applied] == [short.task_id]
        assert seen[0].lease_owner == "w1"
        assert seen[0].attempt == 1
        record = await store.get_task(short.task_id)
        assert record is not None
        assert (record.state, record.end_reason) == (TaskState.DEAD, EndReason.LEASE_LOST)
        assert record.history[-1].worker_id == "reaper"
        assert (await store.get_task(long.task_id)).state is TaskState.RUNNING  # type: ignore[union-attr]


async def test_cancel_ends_a_pending_task_at_once_and_flags_a_running_one(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        waiting, running = await store.submit([new_task(run_at=100.0), new_task()], now=1.0)
        await store.claim("w", ["default"], 1, now=2.0, lease_seconds=30)
        assert await store.cancel(waiting.task_id, now=3.0) is TaskState.CANCELLED
        assert await store.cancel(running.task_id, now=3.0) is TaskState.RUNNING
        record = await store.get_task(running.task_id)
        assert record is not None
        assert record.cancel_requested
        assert record.history[-1].reason == "cancel_requested"
        with pytest.raises(ValidationError) as raised:
            await store.cancel(999_999, now=3.0)
        assert raised.value.field == "task_id"


async def test_replay_restarts_dead_tasks_with_a_fresh_budget_and_keeps_key_and_history(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        (dead,), (alive,) = (
            await store.submit([new_task(key="effect-1")], now=1.0),
            await store.submit([new_task()], now=1.0),
        )
        (lease,) = await store.claim("w", ["default"], 1, now=2.0, lease_seconds=30)
        assert lease.task_id == dead.task_id
        await store.complete_one(
            Outcome(dead.task_id, lease.fencing_token, TaskState.DEAD, "failed", error="boom"),
            "w",
            3.0,
        )
        assert await store.replay([dead.task_id, alive.task_id], now=4.0) == [dead.task_id]
        record = await store.get_task(dead.task_id)
        assert record is not None
        assert (record.state, record.attempts, record.idempotency_key) == (
            TaskState.PENDING,
            0,
            "effect-1",
        )
        assert [e.reason for e in record.history] == ["submitted", "claimed", "failed", "replayed"]


async def test_purge_deletes_only_dead_tasks_and_their_history(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        dead, pending = await store.submit([new_task(), new_task(run_at=50.0)], now=1.0)
        (lease,) = await store.claim("w", ["default"], 1, now=2.0, lease_seconds=30)
        await store.complete_one(
            Outcome(dead.task_id, lease.fencing_token, TaskState.DEAD, "failed"), "w", 3.0
        )
        count_history = "SELECT count(*) FROM legato_task_events WHERE task_id = ?"
        assert await store.database.run(count_history, (dead.task_id,)) == [(2,)]
        assert await store.purge([dead.task_id, pending.task_id]) == 1
        assert await store.get_task(dead.task_id) is None
        assert await store.get_task(pending.task_id) is not None
        assert await store.database.run(count_history, (dead.task_id,)) == [(0,)]


async def test_queue_concurrency_limit_holds_across_workers(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        await store.set_queue(QueueLimits("default", concurrency_limit=2))
        await store.submit([new_task() for _ in range(5)], now=1.0)
        assert len(await store.claim("w1", ["default"], 10, now=2.0, lease_seconds=30)) == 2
        assert await store.claim("w2", ["default"], 10, now=2.0, lease_seconds=30) == []


async def test_queue_rate_limit_is_a_token_bucket_kept_in_the_database(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        await store.set_queue(QueueLimits("default", rate_limit=2.0, burst=3.0))
        await store.submit([new_task() for _ in range(20)], now=0.0)
        assert len(await store.claim("w1", ["default"], 10, now=1.0, lease_seconds=30)) == 3
        assert await store.claim("w2", ["default"], 10, now=1.2, lease_seconds=30) == []
        assert len(await store.claim("w2", ["default"], 10, now=2.0, lease_seconds=30)) == 2


async def test_resource_fit_is_asked_per_candidate_and_unfit_tasks_stay_pending(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        big, small = await store.submit(
            [new_task(resources='{"gpus":4}'), new_task(resources='{"gpus":1}')], now=1.0
        )
        leases = await store.claim(
            "w", ["default"], 10, now=2.0, lease_seconds=30, accept=lambda r: '"gpus":4' not in r
        )
        assert [lease.task_id for lease in leases] == [small.task_id]
        assert (await store.get_task(big.task_id)).state is TaskState.PENDING  # type: ignore[union-attr]


async def test_a_failing_batch_leaves_the_store_as_it_was(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        await store.submit([new_task()], now=1.0)
        with pytest.raises(ZeroDivisionError):
            await store.claim(
                "w", ["default"], 10, now=2.0, lease_seconds=30, accept=lambda _: 1 / 0 > 0
            )
        before = await store.count_by_state()

        async def change_then_fail() -> None:
            async with store.database.transaction() as tx:
                await tx.execute("UPDATE legato_tasks SET state = 'dead' WHERE state = 'pending'")
                raise KeyError("after the update")

        with pytest.raises(KeyError):
            await change_then_fail()
        assert await store.count_by_state() == before == {TaskState.PENDING: 1}


async def test_workers_register_and_deregister(open_store: OpenStore, clock: Clock) -> None:
    async with open_store(clock) as store:
        await store.register_worker(
            WorkerRecord("host:1:a", "host", 1, ("default",), "{}", 4, "0.1.0", "active", 1.0, 1.0)
        )
        (worker,) = await store.list_workers()
        assert (worker.worker_id, worker.queues, worker.concurrency) == (
            "host:1:a",
            ("default",),
            4,
        )
        await store.deregister_worker("host:1:a", now=5.0)
        assert await store.list_workers() == []
        (stopped,) = await store.list_workers(include_stopped=True)
        assert (stopped.state, stopped.stopped_at) == ("stopped", 5.0)


def worker_record(worker_id: str = "host:1:a") -> WorkerRecord:
    return WorkerRecord(worker_id, "host", 1, ("default",), "{}", 4, "0.1.0", "active", 1.0, 1.0)


async def test_a_drain_written_to_the_store_reaches_the_worker_at_its_next_heartbeat(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        await store.register_worker(worker_record())
        assert (await store.heartbeat("host:1:a", {}, now=2.0, lease_seconds=10)).draining is False
        assert await store.set_worker_state("host:1:a", WorkerState.DRAINING) is True
        assert (await store.heartbeat("host:1:a", {}, now=3.0, lease_seconds=10)).draining is True
        (listed,) = await store.list_workers()
        assert listed.state == "draining"
        await store.deregister_worker("host:1:a", now=4.0)
        # A stopped incarnation cannot be drained or revived, and an unknown one is not found.
        assert await store.set_worker_state("host:1:a", "active") is False
        assert await store.set_worker_state("nobody", "draining") is False


async def test_setting_an_unknown_worker_state_is_a_validation_error_naming_it(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        await store.register_worker(worker_record())
        with pytest.raises(ValidationError) as raised:
            await store.set_worker_state("host:1:a", "stopped")
        assert (raised.value.field, raised.value.value) == ("state", "stopped")
        (listed,) = await store.list_workers()
        assert listed.state == "active"


async def test_events_since_returns_every_transition_in_id_order_after_the_cursor(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        assert await store.latest_event_id() == 0
        (first,) = await store.submit([new_task("a")], now=1.0)
        (lease,) = await store.claim("w", ["default"], 1, now=2.0, lease_seconds=10)
        await store.complete([success(lease.task_id, lease.fencing_token)], "w", now=3.0)
        changes = await store.events_since(0)
        assert [(c.task_id, c.name, c.event.to_state, c.event.reason) for c in changes] == [
            (first.task_id, "a", TaskState.RUNNING, "claimed"),
            (first.task_id, "a", TaskState.SUCCEEDED, "succeeded"),
        ]
        assert [c.event.at for c in changes] == [2.0, 3.0]
        assert changes[0].event_id < changes[1].event_id == await store.latest_event_id()
        assert await store.events_since(changes[0].event_id) == changes[1:]
        assert await store.events_since(changes[0].event_id - 1, limit=1) == changes[:1]
        with pytest.raises(ValidationError):
            await store.events_since(0, limit=0)


async def test_list_tasks_filters_by_name_creation_time_and_id_window_in_either_order(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        ids = []
        for created, name in enumerate(["a", "b", "a", "a", "b"]):
            ids += [s.task_id for s in await store.submit([new_task(name)], now=float(created))]
        named = await store.list_tasks(name="a")
        assert [r.task_id for r in named] == [ids[0], ids[2], ids[3]]
        window = await store.list_tasks(created_after=1.0, created_before=4.0)
        assert [r.task_id for r in window] == ids[1:4]
        newest = await store.list_tasks(name="a", descending=True, limit=2)
        assert [r.task_id for r in newest] == [ids[3], ids[2]]
        older = await store.list_tasks(name="a", descending=True, before_id=ids[2])
        assert [r.task_id for r in older] == [ids[0]]
        assert await store.list_tasks(after_id=ids[4]) == []
        assert await store.latest_task_id() == ids[4]


async def test_counts_by_queue_and_state_come_from_one_query(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        await store.submit([new_task(queue="a"), new_task(queue="a"), new_task(queue="b")], now=1.0)
        await store.claim("w", ["a"], 1, now=2.0, lease_seconds=10)
        assert await store.count_by_queue_and_state() == {
            ("a", TaskState.PENDING): 1,
            ("a", TaskState.RUNNING): 1,
            ("b", TaskState.PENDING): 1,
        }


async def test_releasing_a_workers_leases_hands_them_to_the_reaper_at_once(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:
        await store.submit([new_task(), new_task()], now=1.0)
        mine = await store.claim("evicted", ["default"], 1, now=2.0, lease_seconds=60)
        other = await store.claim("alive", ["default"], 1, now=2.0, lease_seconds=60)
        released = await store.release_leases("evicted", now=5.0)
        assert released == [mine[0].task_id]
        seen: list[ExpiredLease] = []

        def decide(expired: ExpiredLease) -> Outcome:
            seen.append(expired)
            return Outcome(
                expired.task_id,
                expired.fencing_token,
                TaskState.RETRYING,
                "lease_expired",
                end_reason=EndReason.LEASE_LOST,
                run_at=6.0,
            )

        reaped = await store.reap_expired(now=5.5, decide=decide)
        assert [o.task_id for o in reaped] == [mine[0].task_id]
        assert [e.lease_owner for e in seen] == ["evicted"]
        still = await store.get_task(other[0].task_id)
        assert still is not None
        assert (still.state, still.lease_owner) == (TaskState.RUNNING, "alive")
        record = await store.get_task(mine[0].task_id)
        assert record is not None
        assert "lease_released" in [e.reason for e in record.history]


async def test_a_task_inserted_in_a_callers_transaction_commits_or_rolls_back_with_it(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as store:

        async def insert_then_fail() -> None:
            async with store.database.transaction() as tx:
                await store.submit_in(tx, [new_task(key="k")], now=1.0)
                raise KeyError("the caller's own work failed")

        with pytest.raises(KeyError):
            await insert_then_fail()
        assert await store.count_by_state() == {}
        async with store.database.transaction() as tx:
            (made,) = await store.submit_in(tx, [new_task(key="k")], now=1.0)
            (again,) = await store.submit_in(tx, [new_task(key="k")], now=1.0)
        assert made.created
        assert not again.created
        assert again.task_id == made.task_id
        assert await store.count_by_state() == {TaskState.PENDING: 1}


async def test_a_round_of_every_kind_of_outcome_sets_each_tasks_fields_and_history(
    open_store: OpenStore, clock: Clock
) -> None:
    # Several outcomes of each shape in one round: on PostgreSQL plain successes take their
    # own narrower statement and the rest go as typed binary arrays; both must write what
    # the general statement always wrote.
    async with open_store(clock) as store:
        await store.submit([new_task() for _ in range(6)], now=1.0)
        a, b, c, d, e, f = await store.claim("w", ["default"], 6, now=2.0, lease_seconds=30)
        outcomes = [
            success(a.task_id, a.fencing_token),
            Outcome(
                b.task_id,
                b.fencing_token,
                TaskState.RETRYING,
                "failed",
                end_reason=EndReason.ERROR,
                error="boom",
                error_kind="transient",
                traceback="tb",
                run_at=9.5,
            ),
            Outcome(c.task_id, c.fencing_token, TaskState.SUCCEEDED, "succeeded", result='"x"'),
            Outcome(
                d.task_id,
                d.fencing_token,
                TaskState.DEAD,
                "failed",
                end_reason=EndReason.TIMEOUT,
                error="slow",
                error_kind="timeout",
            ),
            Outcome(
                e.task_id,
                e.fencing_token,
                TaskState.CANCELLED,
                "cancelled",
                end_reason=EndReason.CANCELLED,
            ),
            Outcome(f.task_id, f.fencing_token, TaskState.PENDING, "released"),
        ]
        assert await store.complete(outcomes, "w", 3.0) == [True] * 6
        expected = {
            a.task_id: (TaskState.SUCCEEDED, None, "1", None, None, 0.0, 3.0, 1, "succeeded"),
            b.task_id: (
                TaskState.RETRYING,
                EndReason.ERROR,
                None,
                "boom",
                "transient",
                9.5,
                None,
                1,
                "failed",
            ),
            c.task_id: (TaskState.SUCCEEDED, None, '"x"', None, None, 0.0, 3.0, 1, "succeeded"),
            d.task_id: (
                TaskState.DEAD,
                EndReason.TIMEOUT,
                None,
                "slow",
                "timeout",
                0.0,
                3.0,
                1,
                "failed",
            ),
            e.task_id: (
                TaskState.CANCELLED,
                EndReason.CANCELLED,
                None,
                None,
                None,
                0.0,
                3.0,
                1,
                "cancelled",
            ),
            f.task_id: (TaskState.PENDING, None, None, None, None, 0.0, None, 0, "released"),
        }
        for task_id, fields in expected.items():
            record = await store.get_task(task_id)
            assert record is not None
            assert (
                record.state,
                record.end_reason,
                record.result,
                record.error,
                record.error_kind,
                record.run_at,
                record.finished_at,
                record.attempts,
                record.history[-1].reason,
            ) == fields
            assert record.lease_owner is None
            assert record.history[-1].fencing_token == record.fencing_token
            assert record.history[-1].worker_id == "w"
        retrying = await store.get_task(b.task_id)
        assert retrying is not None
        assert (retrying.traceback, retrying.history[-1].detail) == ("tb", "boom")


async def test_on_postgresql_claims_read_tasks_by_key_in_a_table_never_analyzed(
    postgres_database: str, clock: Clock
) -> None:
    # Without statistics (a new store, or a server without autovacuum) PostgreSQL guesses a
    # table of a few thousand rows from its pages and finds scanning all of it cheaper than
    # one index lookup per claimed id; once prepared, that plan can stay cached as the table
    # grows. The claim is a ByKey statement: never a sequential scan of legato_tasks, run
    # enough times to be prepared and cached (psycopg prepares after five runs).
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute("TRUNCATE legato_tasks, legato_task_events RESTART IDENTITY CASCADE")
    store = await TaskStore.open(postgres_database, upgrade=False, clock=clock)
    try:
        await store.submit([new_task() for _ in range(3_000)], now=0.0)
        (backend,) = await store.database.backend_pids()
        with psycopg.connect(postgres_database, autocommit=True) as connection:
            connection.execute(
                "SELECT pg_stat_reset_single_table_counters('legato_tasks'::regclass)"
            )
        claimed = 0
        for round_ in range(8):
            leases = await store.claim("w", ["default"], 64, now=1.0 + round_, lease_seconds=30)
            claimed += len(leases)
            outcomes = [success(lease.task_id, lease.fencing_token) for lease in leases]
            assert await store.complete(outcomes, "w", 1.5 + round_) == [True] * len(leases)
        with psycopg.connect(postgres_database, autocommit=True) as connection:
            # A server process reports its table counters when it exits: end it, waiting
            # (up to 10 s) until it has, and read what it did.
            ended = connection.execute("SELECT pg_terminate_backend(%s, 10000)", [backend])
            assert ended.fetchone() == (True,)
            row = connection.execute(
                "SELECT seq_scan, idx_scan, n_tup_upd FROM pg_stat_user_tables "
                "WHERE relname = 'legato_tasks'"
            ).fetchone()
    finally:
        await store.close()
    assert claimed == 8 * 64
    assert row is not None
    seq_scans, index_scans, updated = row
    assert updated >= 2 * claimed  # the claims and completions were counted
    assert index_scans > 0
    assert seq_scans == 0


async def test_on_postgresql_completions_and_heartbeats_read_no_index_of_the_running_set(
    postgres_database: str, clock: Clock
) -> None:
    # A completion or heartbeat names its tasks by id and checks that each is still running.
    # Written plainly, that check let PostgreSQL read the whole running set (the partial
    # lease index, or the state index, with the entries of every earlier lease) and hash-join
    # it with the ids, which it did while the table was young: work in the number of running
    # tasks on every batch. Here 600 tasks run, and a batch of 20 must find its rows by key.
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute("TRUNCATE legato_tasks, legato_task_events RESTART IDENTITY CASCADE")
    store = await TaskStore.open(postgres_database, upgrade=False, clock=clock)
    indexes = ("ix_legato_tasks_lease", "ix_legato_tasks_state_queue")
    try:
        await store.submit([new_task() for _ in range(600)], now=0.0)
        leases = await store.claim("w", ["default"], 600, now=1.0, lease_seconds=30)
        backend = await count_from(store.database, postgres_database, indexes)
        batch = leases[:20]
        held = {lease.task_id: lease.fencing_token for lease in batch}
        reply = await store.heartbeat("w", held, now=2.0, lease_seconds=30)
        outcomes = [success(lease.task_id, lease.fencing_token) for lease in batch]
        accepted = await store.complete(outcomes, "w", 3.0)
        reads = index_reads(postgres_database, backend, indexes)
    finally:
        await store.close()
    assert len(leases) == 600
    assert sorted(reply.leases) == sorted(held)
    assert accepted == [True] * 20
    assert reads == {"ix_legato_tasks_lease": 0, "ix_legato_tasks_state_queue": 0}
