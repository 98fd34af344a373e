"""Workers on simulated time: running, retrying, time limits, cancellation, leases, shutdown."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from legato.kernel.clock import Clock
from legato.kernel.errors import PermanentError, TransientError
from legato.kernel.retry import Jitter, RetryPolicy
from legato.orchestrator import (
    EndReason,
    Orchestrator,
    Resources,
    TaskContext,
    TaskRecord,
    TaskState,
    WorkerConfig,
    current_task,
)
from legato.orchestrator.worker import Worker
from legato.store import NewTask

# The fixtures live in conftest.py; these aliases only name their types.
RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]
WaitUntil = Callable[..., Awaitable[Any]]
FAST = WorkerConfig(lease_seconds=6.0, poll_interval=0.5, grace=2.0, reaper_interval=1.0)


def finished(app: Orchestrator, task_id: int) -> Any:
    async def check() -> TaskRecord | None:
        record = await app.get_task(task_id)
        return record if record is not None and record.state.terminal else None

    return check


async def test_an_async_task_runs_once_and_its_result_and_history_are_stored(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    calls: list[int] = []

    @app.task(name="double")
    async def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    async with app, running_worker():
        task_id = await app.submit("double", 21)
        record: TaskRecord = await wait_until(finished(app, task_id), within=5)
    assert calls == [21]
    assert (record.state, record.result, record.attempts) == (TaskState.SUCCEEDED, "42", 1)
    assert [(e.to_state, e.reason) for e in record.history] == [
        (TaskState.PENDING, "submitted"),
        (TaskState.RUNNING, "claimed"),
        (TaskState.SUCCEEDED, "succeeded"),
    ]


async def test_a_sync_task_runs_in_a_thread_with_its_context(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    seen: list[tuple[str, str, int]] = []

    @app.task(name="write")
    def write(ctx: TaskContext) -> None:
        seen.append((ctx.effect_key, current_task().effect_key, ctx.attempt))

    async with app, running_worker():
        task_id = await app.submit("write", idempotency_key="row-7")
        await wait_until(finished(app, task_id), within=5)
    assert seen == [("row-7", "row-7", 1)]


async def test_a_transient_failure_is_retried_after_a_jittered_backoff(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil, clock: Clock
) -> None:
    attempts: list[float] = []
    policy = RetryPolicy(max_attempts=4, initial_delay=2.0, max_delay=10.0, jitter=Jitter.EQUAL)

    @app.task(name="flaky", retry=policy)
    async def flaky() -> str:
        attempts.append(clock.timestamp())
        if len(attempts) < 3:
            raise TransientError("upstream hiccup")
        return "ok"

    async with app, running_worker():
        task_id = await app.submit("flaky")
        record: TaskRecord = await wait_until(finished(app, task_id), within=60)
    assert (record.state, record.attempts) == (TaskState.SUCCEEDED, 3)
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    # EQUAL jitter: between half and all of 2 s, then of 4 s (plus at most one poll interval).
    assert 1.0 <= gaps[0] <= 2.0 + FAST.poll_interval + 0.1
    assert 2.0 <= gaps[1] <= 4.0 + FAST.poll_interval + 0.1
    assert [e.reason for e in record.history].count("failed") == 2
    assert record.history[2].to_state is TaskState.RETRYING


async def test_a_permanent_error_goes_straight_to_the_dead_letter_queue(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    @app.task(name="broken", retry=RetryPolicy(max_attempts=5))
    async def broken() -> None:
        raise PermanentError("bad account number")

    async with app, running_worker():
        task_id = await app.submit("broken")
        record: TaskRecord = await wait_until(finished(app, task_id), within=5)
        assert (record.state, record.attempts, record.end_reason) == (
            TaskState.DEAD,
            1,
            EndReason.ERROR,
        )
        assert record.error == "PermanentError: bad account number"
        assert "bad account number" in (record.traceback or "")
        assert [t.task_id for t in await app.dead_letters.list()] == [task_id]


async def test_exhausted_attempts_end_dead_with_the_last_error(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    @app.task(name="down", retry=RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=1.0))
    async def down() -> None:
        raise ConnectionError("refused")

    async with app, running_worker():
        task_id = await app.submit("down")
        record: TaskRecord = await wait_until(finished(app, task_id), within=30)
    assert (record.state, record.attempts, record.error_kind) == (TaskState.DEAD, 3, "transient")


async def test_replaying_a_dead_task_runs_it_again_with_the_same_key(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    keys: list[str] = []
    healthy = asyncio.Event()

    @app.task(name="pay", retry=RetryPolicy(max_attempts=1))
    async def pay(ctx: TaskContext) -> None:
        keys.append(ctx.effect_key)
        if not healthy.is_set():
            raise PermanentError("gateway rejected")

    async with app, running_worker():
        task_id = await app.submit("pay", idempotency_key="invoice-9")
        await wait_until(finished(app, task_id), within=5)
        healthy.set()
        assert await app.dead_letters.replay([task_id]) == [task_id]
        await wait_until(finished(app, task_id), within=5)
        record = await app.dead_letters.inspect(task_id)
        assert record is not None
        assert record.state is TaskState.SUCCEEDED
        assert keys == ["invoice-9", "invoice-9"]
        assert "replayed" in [e.reason for e in record.history]
        assert await app.dead_letters.purge([task_id]) == 0  # only dead tasks are purged


def test_the_timings_here_are_the_ones_the_fixture_runs_with(worker_config: WorkerConfig) -> None:
    assert worker_config == FAST


async def test_the_soft_time_limit_cancels_an_async_task_and_counts_as_a_timeout(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil, clock: Clock
) -> None:
    saw_cancel: list[bool] = []

    @app.task(name="slow", timeout=3.0, retry=RetryPolicy(max_attempts=1))
    async def slow() -> None:
        try:
            await clock.sleep(100)
        except asyncio.CancelledError:
            saw_cancel.append(True)
            raise

    async with app, running_worker():
        task_id = await app.submit("slow")
        record: TaskRecord = await wait_until(finished(app, task_id), within=20)
    assert saw_cancel == [True]
    assert (record.state, record.end_reason, record.error_kind) == (
        TaskState.DEAD,
        EndReason.TIMEOUT,
        "timeout",
    )


async def test_a_protected_task_outlives_its_time_limit_and_the_overrun_is_reported(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil, clock: Clock
) -> None:
    @app.task(name="train", timeout=2.0, protected=True)
    async def train() -> str:
        await clock.sleep(20)  # several lease periods: heartbeats must keep the lease
        return "model"

    async with app, running_worker():
        task_id = await app.submit("train")
        record: TaskRecord = await wait_until(finished(app, task_id), within=60)
    assert (record.state, record.result, record.attempts) == (TaskState.SUCCEEDED, '"model"', 1)
    assert "time_limit_exceeded" in [e.reason for e in record.history]


async def test_cancelling_a_running_task_tells_it_and_ends_it_cancelled(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil, clock: Clock
) -> None:
    started = asyncio.Event()

    @app.task(name="long")
    async def long() -> None:
        started.set()
        await clock.sleep(1000)

    async with app, running_worker():
        task_id = await app.submit("long")
        await started.wait()
        assert await app.cancel(task_id) is TaskState.RUNNING
        record: TaskRecord = await wait_until(finished(app, task_id), within=10)
    assert (record.state, record.end_reason) == (TaskState.CANCELLED, EndReason.CANCELLED)


async def test_cancelling_a_pending_task_means_it_never_runs(
    app: Orchestrator, running_worker: RunWorker, clock: Clock
) -> None:
    ran: list[bool] = []

    @app.task(name="later")
    async def later() -> None:
        ran.append(True)

    async with app, running_worker():
        task_id = await app.submit("later", delay=5.0)
        assert await app.cancel(task_id) is TaskState.CANCELLED
        await clock.sleep(10)
    assert ran == []


async def test_a_dead_workers_lease_is_reaped_and_the_task_runs_within_the_lease_timeout(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil, clock: Clock
) -> None:
    @app.task(name="job", retry=RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=0.1))
    async def job() -> str:
        return "done"

    async with app:
        task_id = await app.submit("job")
        # A worker that claims and then dies: it never heartbeats or reports.
        (lease,) = await app.store.claim(
            "ghost", ["default"], 1, clock.timestamp(), FAST.lease_seconds
        )
        crashed_at = clock.timestamp()
        async with running_worker():
            record: TaskRecord = await wait_until(finished(app, task_id), within=30)
    recovered_in = record.finished_at - crashed_at  # type: ignore[operator]
    assert recovered_in <= FAST.lease_seconds + FAST.reaper_interval * 1.25 + 1.0
    assert record.state is TaskState.SUCCEEDED
    assert record.fencing_token == lease.fencing_token + 1
    reasons = [(e.reason, e.to_state) for e in record.history]
    assert ("lease_expired", TaskState.RETRYING) in reasons


async def test_a_worker_that_lost_its_lease_stops_the_attempt_and_reports_nothing(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil, clock: Clock
) -> None:
    started = asyncio.Event()
    stopped: list[bool] = []

    @app.task(name="stuck", retry=RetryPolicy(max_attempts=1))
    async def stuck() -> None:
        started.set()
        try:
            await clock.sleep(1000)
        except asyncio.CancelledError:
            stopped.append(True)
            raise

    async with app, running_worker():
        task_id = await app.submit("stuck")
        await started.wait()
        # The lease is taken away behind the worker's back (as after a long network partition).
        async with app.store.database.transaction() as tx:
            await tx.execute(
                "UPDATE legato_tasks SET state = 'dead', lease_owner = NULL WHERE id = ?",
                (task_id,),
            )
        await wait_until(lambda: _true(bool(stopped)), within=FAST.lease_seconds)
        await clock.sleep(FAST.lease_seconds)
        record = await app.get_task(task_id)
    assert record is not None
    assert record.state is TaskState.DEAD
    assert [e.reason for e in record.history] == ["submitted", "claimed"]


async def _true(value: bool) -> bool:
    return value


async def test_a_graceful_stop_releases_unfinished_tasks_without_spending_an_attempt(
    app: Orchestrator, running_worker: RunWorker, clock: Clock
) -> None:
    started = asyncio.Event()

    @app.task(name="endless")
    async def endless() -> None:
        started.set()
        await clock.sleep(1000)

    async with app:
        async with running_worker():
            task_id = await app.submit("endless")
            await started.wait()
        record = await app.get_task(task_id)
        assert record is not None
        assert (record.state, record.attempts) == (TaskState.PENDING, 0)
        assert record.history[-1].reason == "released"
        workers = await app.store.list_workers(include_stopped=True)
        assert [w.state for w in workers] == ["stopped"]


async def test_higher_priority_tasks_run_first(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    order: list[str] = []

    @app.task(name="log")
    async def log(label: str) -> None:
        order.append(label)

    async with app:
        ids = await app.submit_many(
            [
                app.call("log", "low-1"),
                app.call("log", "high", priority=10),
                app.call("log", "low-2"),
            ]
        )
        async with running_worker(concurrency=1):
            for task_id in ids:
                await wait_until(finished(app, task_id), within=5)
    assert order == ["high", "low-1", "low-2"]


async def test_a_queue_concurrency_limit_holds_across_two_workers(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil, clock: Clock
) -> None:
    running = 0
    peak = 0

    @app.task(name="busy")
    async def busy() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await clock.sleep(1)
        running -= 1

    async with app:
        await app.configure_queue("default", concurrency_limit=2)
        ids = await app.submit_many([app.call("busy") for _ in range(8)])
        async with running_worker(concurrency=4), running_worker(concurrency=4):
            for task_id in ids:
                await wait_until(finished(app, task_id), within=30)
    assert peak == 2


async def test_a_worker_only_claims_tasks_that_fit_its_resources(
    app: Orchestrator, running_worker: RunWorker, clock: Clock, wait_until: WaitUntil
) -> None:
    @app.task(name="gpu_job")
    async def gpu_job() -> None:
        return None

    async with app:
        small = await app.submit("gpu_job", resources=Resources(gpus=1))
        big = await app.submit("gpu_job", resources=Resources(gpus=2))
        async with running_worker(resources=Resources(gpus=1, cpu=4)):
            await wait_until(finished(app, small), within=5)
            await clock.sleep(3)
        record = await app.get_task(big)
        assert record is not None
        assert record.state is TaskState.PENDING


async def test_a_worker_that_declares_no_resources_leaves_tasks_that_request_some(
    app: Orchestrator, running_worker: RunWorker, clock: Clock, wait_until: WaitUntil
) -> None:
    @app.task(name="plain")
    async def plain() -> None:
        return None

    async with app:
        gpu = await app.submit("plain", resources=Resources(gpus=1))
        cheap = await app.submit("plain")
        async with running_worker():
            await wait_until(finished(app, cheap), within=5)
            await clock.sleep(3)
        record = await app.get_task(gpu)
        assert record is not None
        assert record.state is TaskState.PENDING


async def test_a_running_worker_is_registered_with_its_queues(
    app: Orchestrator, running_worker: RunWorker
) -> None:
    async with app, running_worker(queues=["a", "b"], concurrency=3) as worker:
        await worker.ready.wait()
        (registered,) = await app.store.list_workers()
        assert registered.worker_id == worker.worker_id
        assert (registered.queues, registered.concurrency) == (("a", "b"), 3)


async def test_a_worker_leaves_tasks_its_app_does_not_know_to_workers_that_do(
    app: Orchestrator, running_worker: RunWorker, clock: Clock, wait_until: WaitUntil
) -> None:
    @app.task(name="known")
    async def known() -> None:
        return None

    async with app:
        foreign = await app.store.submit(
            [
                NewTask(
                    name="other_app.job",
                    queue="default",
                    payload='{"args":[],"kwargs":{}}',
                    priority=5,
                    run_at=0.0,
                    retry="{}",
                )
            ],
            now=clock.timestamp(),
        )
        mine = await app.submit("known")
        async with running_worker():
            await wait_until(finished(app, mine), within=5)
        record = await app.get_task(foreign[0].task_id)
        assert record is not None
        assert (record.state, record.attempts) == (TaskState.PENDING, 0)


async def test_a_drain_written_to_the_store_stops_claiming_lets_work_finish_and_deregisters(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil, clock: Clock
) -> None:
    started = asyncio.Event()

    @app.task(name="long")
    async def long() -> str:
        started.set()
        await clock.sleep(30)  # far beyond the shutdown grace period (2 s)
        return "done"

    @app.task(name="later")
    async def later() -> None:
        return None

    async with app:
        async with running_worker() as worker:
            long_id = await app.submit("long")
            await started.wait()
            # What the service or `legato drain` does from another process: only the store.
            assert await app.store.set_worker_state(worker.worker_id, "draining")
            await wait_until(lambda: _is_draining(worker), within=FAST.lease_seconds)
            later_id = await app.submit("later")

            async def stopped() -> bool:
                workers = await app.store.list_workers(include_stopped=True)
                return [w.state for w in workers] == ["stopped"]

            await wait_until(stopped, within=60)
        done = await app.get_task(long_id)
        assert done is not None
        assert (done.state, done.result) == (TaskState.SUCCEEDED, '"done"')
        waiting = await app.get_task(later_id)
        assert waiting is not None
        assert (waiting.state, waiting.attempts) == (TaskState.PENDING, 0)


async def _is_draining(worker: Worker) -> bool:
    return worker.draining


async def test_an_async_task_that_ignores_a_cancel_is_abandoned_after_the_grace_period(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil, clock: Clock
) -> None:
    # A plain async task (no time limit) runs without a watcher of its own; the cancel must
    # still give it the grace period, then abandon it, report it cancelled, free its slot.
    started = asyncio.Event()
    outlived: list[float] = []

    @app.task(name="stubborn")
    async def stubborn() -> str:
        started.set()
        try:
            await clock.sleep(1000)
        except asyncio.CancelledError:
            await clock.sleep(50)  # ignores the cancel: keeps going past the grace period
            outlived.append(clock.monotonic())
        return "late"

    @app.task(name="next")
    async def next_task() -> str:
        return "ran"

    async with app, running_worker(concurrency=1):
        task_id = await app.submit("stubborn")
        await started.wait()
        asked_at = clock.monotonic()
        assert await app.cancel(task_id) is TaskState.RUNNING
        record: TaskRecord = await wait_until(finished(app, task_id), within=30)
        ended_at = clock.monotonic()
        follower = await app.submit("next")
        after: TaskRecord = await wait_until(finished(app, follower), within=10)
    assert (record.state, record.end_reason, record.result) == (
        TaskState.CANCELLED,
        EndReason.CANCELLED,
        None,
    )
    assert FAST.grace <= ended_at - asked_at < 50
    assert outlived == []  # reported while the function was still running
    assert (after.state, after.result) == (TaskState.SUCCEEDED, '"ran"')


async def test_a_stop_returns_once_the_last_running_task_is_reported_not_after_the_grace(
    app: Orchestrator, running_worker: RunWorker, clock: Clock
) -> None:
    # The task ends a second after the stop: the worker reports it and deregisters then,
    # instead of waiting out the rest of its (long) grace period with nothing left to do.
    started = asyncio.Event()

    @app.task(name="short")
    async def short() -> str:
        started.set()
        await clock.sleep(5)
        return "done"

    patient = WorkerConfig(lease_seconds=6.0, poll_interval=0.5, grace=600.0, reaper_interval=1.0)
    async with app:
        async with running_worker(config=patient):
            task_id = await app.submit("short")
            await started.wait()
            stopped_at = clock.monotonic()
        ended_at = clock.monotonic()
        record = await app.get_task(task_id)
        workers = await app.store.list_workers(include_stopped=True)
    assert record is not None
    assert (record.state, record.result) == (TaskState.SUCCEEDED, '"done"')
    assert [w.state for w in workers] == ["stopped"]
    assert ended_at - stopped_at < 60  # the task's 5 s and a report, not the 600 s grace


async def test_attempts_ending_while_the_store_is_busy_are_reported_and_replaced_in_one_batch(
    app: Orchestrator, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    # Ten attempts end a few loop passes apart while another transaction holds the store's
    # connection. The worker waits for the connection before it takes its batch: the ten
    # completions and the claim of the next ten travel together. Taking the batch at the
    # first end, it reported one, claimed one, then the other nine: two cohorts from then on.
    release = asyncio.Event()
    started: list[int] = []

    @app.task(name="staggered")
    async def staggered(passes: int) -> None:
        started.append(passes)
        await release.wait()
        for _ in range(passes):
            await asyncio.sleep(0)

    async with app:
        async with running_worker(concurrency=10) as worker:
            first = [await app.submit("staggered", n) for n in range(10)]

            async def all_started() -> bool:
                return len(started) == 10

            await wait_until(all_started, within=5)
            later = [await app.submit("staggered", 0) for _ in range(10)]

            async with app.store.database.transaction():
                # The clock stands still while a PostgreSQL transaction is open (its I/O is
                # real): wait by loop passes, a bounded number of them.
                release.set()
                for _ in range(1_000):
                    if not worker.running_tasks:
                        break
                    await asyncio.sleep(0)
                assert not worker.running_tasks
            done = [await wait_until(finished(app, task_id), within=5) for task_id in later]
        rows = await app.store.database.run(
            "SELECT task_id, reason FROM legato_task_events "
            "WHERE reason IN ('succeeded', 'claimed') ORDER BY id"
        )
    assert all(record.state is TaskState.SUCCEEDED for record in done)
    after_first_claims = rows[10:30]
    assert after_first_claims == [(task_id, "succeeded") for task_id in sorted(first)] + [
        (task_id, "claimed") for task_id in sorted(later)
    ]
