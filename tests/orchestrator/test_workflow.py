"""Durable workflows on both backends and simulated time: journal, resume, sagas, sleep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import PermanentError, TransientError, ValidationError
from legato.kernel.retry import Jitter, RetryPolicy
from legato.orchestrator import Orchestrator, TaskState, WorkerConfig
from legato.orchestrator.worker import Worker
from legato.orchestrator.workflow import WakeOnClaim, WorkflowEngine
from legato.orchestrator.workflow_context import WorkflowContext, current_step
from legato.orchestrator.workflow_errors import StepFailedError
from legato.store.workflow_records import StepKind, StepState, WorkflowRecord, WorkflowState

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]
WaitUntil = Callable[..., Awaitable[Any]]
FAST = WorkerConfig(lease_seconds=6.0, poll_interval=0.5, grace=2.0, reaper_interval=1.0)
# Workers that would poll rarely: a workflow waking from a sleep must not depend on polling.
SLOW_POLL = WorkerConfig(lease_seconds=60.0, poll_interval=30.0, grace=2.0, reaper_interval=10.0)
QUICK = RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=1.0, jitter=Jitter.NONE)


@pytest.fixture
def engine(app: Orchestrator) -> WorkflowEngine:
    """A workflow engine on the test's app, with quick step retries."""
    return WorkflowEngine(app, step_retry=QUICK)


def ended(engine: WorkflowEngine, workflow_id: int) -> Callable[[], Awaitable[Any]]:
    async def check() -> WorkflowRecord | None:
        record = await engine.get_workflow(workflow_id)
        return record if record is not None and record.state.terminal else None

    return check


def in_state(
    engine: WorkflowEngine, workflow_id: int, state: WorkflowState
) -> Callable[[], Awaitable[Any]]:
    async def check() -> WorkflowRecord | None:
        record = await engine.get_workflow(workflow_id)
        return record if record is not None and record.state is state else None

    return check


@asynccontextmanager
async def crashable_worker(app: Orchestrator) -> AsyncIterator[asyncio.Task[None]]:
    """A worker whose run can be cancelled outright: its leases are left to expire, as in
    a crash, instead of being released by a clean shutdown."""
    worker = app.worker(["default"], concurrency=4, config=FAST)
    async with asyncio.TaskGroup() as group:
        running = group.create_task(worker.run(), name="crashable-worker")
        try:
            yield running
        finally:
            running.cancel()


async def test_steps_run_once_and_their_results_are_journaled_in_order(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    calls: list[str] = []

    async def reserve(item: str) -> dict[str, str]:
        calls.append(f"reserve {item}")
        return {"reservation": f"r-{item}"}

    def charge(reservation: dict[str, str]) -> int:
        calls.append(f"charge {reservation['reservation']}")
        return 42

    @engine.workflow(name="order")
    async def order(ctx: WorkflowContext, item: str) -> dict[str, Any]:
        reservation = await ctx.step(reserve, item)
        charged = await ctx.step(charge, reservation, name="charge")
        return {"reservation": reservation, "charged": charged}

    async with app, running_worker():
        workflow_id = await engine.start("order", "book")
        record: WorkflowRecord = await wait_until(ended(engine, workflow_id), within=10)
    assert calls == ["reserve book", "charge r-book"]
    assert record.state is WorkflowState.SUCCEEDED
    assert record.result == '{"reservation":{"reservation":"r-book"},"charged":42}'
    assert [(e.index, e.name, e.state, e.result) for e in record.journal] == [
        (0, f"{__name__}.{reserve.__qualname__}", StepState.SUCCEEDED, '{"reservation":"r-book"}'),
        (1, "charge", StepState.SUCCEEDED, "42"),
    ]
    assert [(e.from_state, e.to_state) for e in record.history] == [
        (None, WorkflowState.PENDING),
        (WorkflowState.PENDING, WorkflowState.RUNNING),
        (WorkflowState.RUNNING, WorkflowState.SUCCEEDED),
    ]


async def test_a_steps_entry_is_in_the_store_before_the_next_step_runs(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    # The last step's entry travels with the workflow's end; any earlier one must be
    # stored before the next step can act on the world.
    seen: list[list[int]] = []

    async def first() -> int:
        return 1

    async def second(previous: int) -> int:
        record = await engine.get_workflow(current_step().workflow_id)
        assert record is not None
        seen.append([entry.index for entry in record.journal])
        return previous + 1

    @engine.workflow(name="two-steps")
    async def two_steps(ctx: WorkflowContext, _: None) -> int:
        value: int = await ctx.step(first)
        return int(await ctx.step(second, value))

    async with app, running_worker():
        workflow_id = await engine.start("two-steps")
        record: WorkflowRecord = await wait_until(ended(engine, workflow_id), within=10)
    assert seen == [[0]]
    assert record.state is WorkflowState.SUCCEEDED
    assert [(e.index, e.result) for e in record.journal] == [(0, "1"), (1, "2")]


async def test_claiming_a_run_task_on_postgresql_wakes_its_workflow_in_the_same_commit(
    app: Orchestrator, engine: WorkflowEngine
) -> None:
    async def noop() -> None:
        return None

    @engine.workflow(name="one-step")
    async def one_step(ctx: WorkflowContext, _: None) -> None:
        await ctx.step(noop)

    rider = app.claim_rider
    assert isinstance(rider, WakeOnClaim)
    async with app:
        workflow_id = await engine.start("one-step")
        _, leases = await app.store.complete_and_claim(
            [], "w-1", ["default"], 10, app.clock.timestamp(), 30.0, None, None, rider
        )
        record = await engine.get_workflow(workflow_id)
        dialect = app.store.database.dialect
    assert record is not None
    assert [lease.task_id for lease in leases] == [record.task_id]
    if dialect == "postgresql":
        # Marked running by the claim's own transaction, its record kept for the run.
        assert record.state is WorkflowState.RUNNING
        assert [e.reason for e in record.history] == ["started", "running"]
        assert rider.woken[leases[0].task_id].workflow_id == workflow_id
    else:
        # SQLite: the run itself wakes the workflow (a round trip costs nothing there).
        assert record.state is WorkflowState.PENDING
        assert rider.woken == {}


async def test_after_a_crash_completed_steps_are_replayed_and_the_next_step_runs(
    app: Orchestrator, engine: WorkflowEngine, wait_until: WaitUntil
) -> None:
    runs: dict[str, int] = {"one": 0, "two": 0, "three": 0}
    keys: list[str] = []
    second_started = asyncio.Event()
    hang_once = asyncio.Event()

    async def one() -> int:
        runs["one"] += 1
        return 1

    async def two(previous: int) -> int:
        runs["two"] += 1
        keys.append(current_step().effect_key)
        if runs["two"] == 1:
            second_started.set()
            await hang_once.wait()  # the worker dies while this step is in flight
        return previous + 1

    async def three(previous: int) -> int:
        runs["three"] += 1
        return previous + 1

    @engine.workflow(name="three-steps")
    async def flow(ctx: WorkflowContext, _: None) -> int:
        first = await ctx.step(one)
        second = await ctx.step(two, first)
        return int(await ctx.step(three, second))

    async with app:
        async with crashable_worker(app):
            workflow_id = await engine.start("three-steps")
            await second_started.wait()
        # The first worker is gone; a new one reaps its lease and resumes the workflow.
        async with crashable_worker(app):
            record: WorkflowRecord = await wait_until(ended(engine, workflow_id), within=60)
    assert record.state is WorkflowState.SUCCEEDED
    assert record.result == "3"
    assert runs == {"one": 1, "two": 2, "three": 1}
    assert keys == [f"wf{workflow_id}-s1", f"wf{workflow_id}-s1"]  # same key on every run
    reasons = [e.reason for e in record.history]
    assert reasons.count("running") == 1  # resumed by a retried task, not restarted


async def test_a_failed_step_compensates_completed_steps_in_reverse_order(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    undone: list[str] = []

    async def do(label: str) -> str:
        return label

    async def undo(result: str) -> None:
        undone.append(result)

    async def explode() -> None:
        raise PermanentError("venue rejected the order")

    @engine.workflow(name="saga")
    async def saga(ctx: WorkflowContext, _: None) -> None:
        await ctx.step(do, "a", name="a", compensate=undo)
        await ctx.step(do, "b", name="b")  # nothing to undo
        await ctx.step(do, "c", name="c", compensate=undo)
        await ctx.step(explode)

    async with app, running_worker():
        workflow_id = await engine.start("saga")
        record: WorkflowRecord = await wait_until(ended(engine, workflow_id), within=10)
    assert undone == ["c", "a"]
    assert record.state is WorkflowState.COMPENSATED
    assert "venue rejected the order" in (record.error or "")
    states = [(e.name, e.state, e.compensation_state) for e in record.journal]
    assert states == [
        ("a", StepState.SUCCEEDED, "compensated"),
        ("b", StepState.SUCCEEDED, None),
        ("c", StepState.SUCCEEDED, "compensated"),
        (f"{__name__}.{explode.__qualname__}", StepState.FAILED, None),
    ]
    assert record.journal[3].attempts == 1  # a permanent error is not retried
    assert [e.to_state for e in record.history][-2:] == [
        WorkflowState.COMPENSATING,
        WorkflowState.COMPENSATED,
    ]


async def test_a_compensation_that_keeps_failing_leaves_the_workflow_dead_with_the_reason(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    undone: list[str] = []
    attempts: list[int] = []

    async def do(label: str) -> str:
        return label

    async def undo(result: str) -> None:
        undone.append(result)

    async def stuck_undo(result: str) -> None:
        attempts.append(current_step().attempt)
        raise TransientError("venue unreachable")

    async def explode() -> None:
        raise PermanentError("no")

    @engine.workflow(name="stuck")
    async def stuck(ctx: WorkflowContext, _: None) -> None:
        await ctx.step(do, "a", name="a", compensate=undo)
        await ctx.step(do, "b", name="b", compensate=stuck_undo)
        await ctx.step(explode)

    async with app, running_worker():
        workflow_id = await engine.start("stuck")
        record: WorkflowRecord = await wait_until(ended(engine, workflow_id), within=10)
    assert record.state is WorkflowState.DEAD
    assert attempts == [1, 2, 3]  # the step policy's three attempts
    assert undone == []  # compensation stops at the first undo that cannot be made
    assert "compensation of step 'b'" in (record.error or "")
    assert "venue unreachable" in (record.error or "")
    assert record.journal[1].compensation_state == "failed"
    assert record.history[-1].reason == "compensation_failed"


async def test_a_crash_during_compensation_resumes_compensating_without_redoing_undos(
    app: Orchestrator, engine: WorkflowEngine, wait_until: WaitUntil
) -> None:
    undone: list[str] = []
    b_started = asyncio.Event()
    never = asyncio.Event()

    async def do(label: str) -> str:
        return label

    async def undo(result: str) -> None:
        undone.append(result)
        if result == "b" and undone.count("b") == 1:
            b_started.set()
            await never.wait()  # the worker dies in the middle of this undo

    async def explode() -> None:
        raise PermanentError("no")

    @engine.workflow(name="undo-crash")
    async def flow(ctx: WorkflowContext, _: None) -> None:
        for label in ("a", "b", "c"):
            await ctx.step(do, label, name=label, compensate=undo)
        await ctx.step(explode)

    async with app:
        async with crashable_worker(app):
            workflow_id = await engine.start("undo-crash")
            await b_started.wait()
        compensating = await engine.get_workflow(workflow_id)
        assert compensating is not None
        assert compensating.state is WorkflowState.COMPENSATING
        async with crashable_worker(app):
            record: WorkflowRecord = await wait_until(ended(engine, workflow_id), within=60)
    assert record.state is WorkflowState.COMPENSATED
    assert undone == ["c", "b", "b", "a"]  # c is not undone twice; b is finished, then a


async def test_a_transient_step_failure_is_retried_and_the_attempts_are_journaled(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(current_step().attempt)
        if len(attempts) < 3:
            raise TransientError("try again")
        return "ok"

    @engine.workflow(name="flaky")
    async def flow(ctx: WorkflowContext, _: None) -> str:
        return str(await ctx.step(flaky, retry=QUICK))

    async with app, running_worker():
        workflow_id = await engine.start("flaky")
        record: WorkflowRecord = await wait_until(ended(engine, workflow_id), within=10)
    assert attempts == [1, 2, 3]
    assert (record.state, record.journal[0].attempts) == (WorkflowState.SUCCEEDED, 3)


async def test_a_caught_step_failure_lets_the_workflow_take_another_path(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    async def refuse() -> None:
        raise PermanentError("refused")

    async def fallback() -> str:
        return "plan b"

    @engine.workflow(name="fallback")
    async def flow(ctx: WorkflowContext, _: None) -> str:
        try:
            await ctx.step(refuse)
        except StepFailedError as failure:
            return f"{await ctx.step(fallback)} after step {failure.index}"
        return "plan a"

    async with app, running_worker():
        workflow_id = await engine.start("fallback")
        record: WorkflowRecord = await wait_until(ended(engine, workflow_id), within=10)
    assert (record.state, record.result) == (WorkflowState.SUCCEEDED, '"plan b after step 0"')


async def test_durable_sleep_frees_the_worker_and_resumes_at_the_journaled_time(
    app: Orchestrator,
    engine: WorkflowEngine,
    running_worker: RunWorker,
    wait_until: WaitUntil,
    clock: Clock,
) -> None:
    woke_at: list[float] = []

    async def note() -> float:
        woke_at.append(clock.timestamp())
        return clock.timestamp()

    @engine.workflow(name="sleeper")
    async def sleeper(ctx: WorkflowContext, _: None) -> None:
        await ctx.sleep(600)
        await ctx.step(note)

    async with app:
        async with running_worker(config=SLOW_POLL):
            started = clock.timestamp()
            workflow_id = await engine.start("sleeper")
            sleeping: WorkflowRecord = await wait_until(
                in_state(engine, workflow_id, WorkflowState.SLEEPING), within=10
            )
        # No worker for five minutes: the sleep is in the store, not in a process.
        await clock.sleep(300)
        assert woke_at == []
        async with running_worker(config=SLOW_POLL):
            record: WorkflowRecord = await wait_until(
                ended(engine, workflow_id), within=600, step=10.0
            )
            tasks = await app.list_tasks()
    assert sleeping.wake_at == pytest.approx(started + 600, abs=1)
    assert record.state is WorkflowState.SUCCEEDED
    assert woke_at[0] >= started + 600
    assert woke_at[0] < started + 600 + 5
    assert [e.kind for e in record.journal] == [StepKind.SLEEP, StepKind.STEP]
    assert [e.reason for e in record.history] == [
        "started",
        "running",
        "sleep",
        "resumed",
        "succeeded",
    ]
    # The sleeping run handed over to a second task: two tasks, both succeeded.
    assert [t.state for t in tasks] == [TaskState.SUCCEEDED, TaskState.SUCCEEDED]


async def test_a_replay_that_asks_for_a_different_step_kills_the_workflow_naming_both(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    version = {"current": 1}

    async def place_order() -> str:
        return "placed"

    async def check_risk() -> str:
        return "checked"

    @engine.workflow(name="drifting")
    async def drifting(ctx: WorkflowContext, _: None) -> None:
        # Deployed code changed between runs: the first step is no longer the same.
        await ctx.step(place_order if version["current"] == 1 else check_risk)
        await ctx.sleep(60)

    async with app, running_worker(config=SLOW_POLL):
        workflow_id = await engine.start("drifting")
        await wait_until(in_state(engine, workflow_id, WorkflowState.SLEEPING), within=10)
        version["current"] = 2
        record: WorkflowRecord = await wait_until(ended(engine, workflow_id), within=120, step=5.0)
    assert record.state is WorkflowState.DEAD
    assert "not deterministic" in (record.error or "")
    assert "place_order" in (record.error or "")
    assert "check_risk" in (record.error or "")
    assert record.history[-1].reason == "non_deterministic"


async def test_journaled_time_and_seed_are_the_same_on_replay(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    seen: list[tuple[str, float]] = []

    @engine.workflow(name="stamps")
    async def stamps(ctx: WorkflowContext, _: None) -> None:
        now = await ctx.now()
        rng = await ctx.random()
        seen.append((now.isoformat(), rng.random()))
        await ctx.sleep(30)

    async with app, running_worker(config=SLOW_POLL):
        workflow_id = await engine.start("stamps")
        await wait_until(ended(engine, workflow_id), within=120, step=5.0)
    assert len(seen) == 2
    assert seen[0] == seen[1]


async def test_starting_twice_with_one_idempotency_key_starts_one_workflow(
    app: Orchestrator, engine: WorkflowEngine
) -> None:
    @engine.workflow(name="once")
    async def once(ctx: WorkflowContext, _: None) -> None:
        return None

    async with app:
        first = await engine.start("once", idempotency_key="trade-7")
        second = await engine.start("once", idempotency_key="trade-7")
        listed = await engine.list_workflows()
        tasks = await app.list_tasks()
    assert first == second
    assert [w.workflow_id for w in listed] == [first]
    assert len(tasks) == 1


async def test_cancelling_a_sleeping_workflow_cancels_it_and_its_wake_up_task(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    @engine.workflow(name="nap")
    async def nap(ctx: WorkflowContext, _: None) -> None:
        await ctx.sleep(600)

    async with app, running_worker(config=SLOW_POLL):
        workflow_id = await engine.start("nap")
        sleeping: WorkflowRecord = await wait_until(
            in_state(engine, workflow_id, WorkflowState.SLEEPING), within=10
        )
        assert await engine.cancel(workflow_id) is WorkflowState.CANCELLED
        record = await engine.get_workflow(workflow_id)
        assert sleeping.task_id is not None
        task = await app.get_task(sleeping.task_id)
    assert record is not None
    assert record.state is WorkflowState.CANCELLED
    assert task is not None
    assert task.state is TaskState.CANCELLED


async def test_bad_input_is_rejected_naming_the_field_and_nothing_is_written(
    app: Orchestrator, engine: WorkflowEngine
) -> None:
    @engine.workflow(name="strict")
    async def strict(ctx: WorkflowContext, _: Any) -> None:
        return None

    async with app:
        with pytest.raises(ValidationError) as unknown:
            await engine.start("nope")
        with pytest.raises(ValidationError) as not_json:
            await engine.start("strict", {"when": object()})
        with pytest.raises(ValidationError) as bad_key:
            await engine.start("strict", idempotency_key="")
        listed = await engine.list_workflows()
    assert (unknown.value.field, not_json.value.field, bad_key.value.field) == (
        "workflow",
        "input",
        "idempotency_key",
    )
    assert listed == []


def test_registering_a_sync_function_as_a_workflow_is_refused(engine: WorkflowEngine) -> None:
    def not_async(ctx: WorkflowContext, _: None) -> None:
        return None

    with pytest.raises(ValidationError) as refused:
        engine.workflow(name="sync")(not_async)  # type: ignore[type-var]
    assert refused.value.field == "workflow"


async def test_cancelling_a_running_workflow_stops_its_run_and_records_it(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> None:
    started = asyncio.Event()
    undone: list[str] = []

    async def block() -> None:
        started.set()
        await asyncio.Event().wait()

    async def first() -> str:
        return "first"

    async def undo(result: str) -> None:
        undone.append(result)

    @engine.workflow(name="long")
    async def long(ctx: WorkflowContext, _: None) -> None:
        await ctx.step(first, compensate=undo)
        await ctx.step(block)

    async with app, running_worker():
        workflow_id = await engine.start("long")
        await started.wait()
        assert await engine.cancel(workflow_id) is WorkflowState.RUNNING
        record: WorkflowRecord = await wait_until(ended(engine, workflow_id), within=30)
    assert record.state is WorkflowState.CANCELLED
    assert record.history[-1].reason == "cancelled"
    assert undone == []  # cancelling is not failing: nothing is compensated
