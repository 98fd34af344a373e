"""Group commit through the app: concurrent submits and workflow starts, both backends.

As in tests/store/test_group_commit.py, each test holds the store's connection in a
transaction while its calls arrive, so they queue behind the first one at a known moment.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
import pytest

from legato.kernel.errors import ValidationError
from legato.orchestrator import Orchestrator
from legato.orchestrator.worker import Worker
from legato.orchestrator.workflow import WorkflowEngine
from legato.orchestrator.workflow_context import WorkflowContext
from legato.store import StoreUnavailableError, TaskStore
from legato.store.workflow_records import WorkflowState

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]
WaitUntil = Callable[..., Awaitable[Any]]

Until = Callable[[Callable[[], bool]], Awaitable[None]]
ConnectionHeld = Callable[[TaskStore], AbstractAsyncContextManager[None]]


@pytest.fixture
def engine(app: Orchestrator) -> WorkflowEngine:
    engine = WorkflowEngine(app)

    async def note(value: str) -> str:
        return f"noted {value}"

    @engine.workflow(name="one-step")
    async def one_step(ctx: WorkflowContext, value: str) -> str:
        result: str = await ctx.step(note, value)
        return result

    return engine


async def test_concurrent_submits_share_a_commit_and_a_bad_call_fails_alone(
    app: Orchestrator,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    async with app:
        async with connection_held(app.store):
            calls = [asyncio.create_task(app.submit("add", n, 1)) for n in range(8)]
            bad = asyncio.create_task(app.submit("add", 1))  # a missing argument
            late = [asyncio.create_task(app.submit("add", n, 2)) for n in range(2)]
            await until(lambda: app.store.submit_group.stats.calls == 10 and bad.done())
        ids = await asyncio.gather(*calls, *late)
        with pytest.raises(ValidationError):
            await bad
        assert app.store.submit_group.stats.transactions == 2
        assert len(set(ids)) == 10
        records = [await app.get_task(task_id) for task_id in ids]
        assert [r.payload if r else None for r in records] == [
            *(f'{{"args":[{n},1],"kwargs":{{}}}}' for n in range(8)),
            *(f'{{"args":[{n},2],"kwargs":{{}}}}' for n in range(2)),
        ]


async def test_concurrent_starts_share_a_commit_and_every_workflow_runs(
    app: Orchestrator,
    engine: WorkflowEngine,
    running_worker: RunWorker,
    wait_until: WaitUntil,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    async with app:
        async with connection_held(app.store):
            starts = [asyncio.create_task(engine.start("one-step", f"v{n}")) for n in range(12)]
            await until(lambda: engine.store.start_group.stats.calls == 12)
        ids = await asyncio.gather(*starts)
        stats = engine.store.start_group.stats
        assert (stats.transactions, stats.batches, stats.largest) == (2, 1, 11)
        assert len(set(ids)) == 12
        records = [await engine.get_workflow(workflow_id) for workflow_id in ids]
        assert [r.payload if r else None for r in records] == [f'"v{n}"' for n in range(12)]
        assert len({r.task_id for r in records if r}) == 12
        # Each run task points back at its workflow, queued in start order.
        run_tasks = [await app.get_task(r.task_id) for r in records if r and r.task_id]
        assert [t.task_id for t in run_tasks if t] == sorted(r.task_id for r in records if r)
        async with running_worker(concurrency=4):

            async def all_succeeded() -> bool:
                done = [await engine.get_workflow(workflow_id) for workflow_id in ids]
                return all(r is not None and r.state is WorkflowState.SUCCEEDED for r in done)

            await wait_until(all_succeeded, within=30.0)
        results = [(await engine.get_workflow(workflow_id)) for workflow_id in ids]
        assert [r.result if r else None for r in results] == [f'"noted v{n}"' for n in range(12)]


async def _forbid_payload(app: Orchestrator, payload: str) -> None:
    database = app.store.database
    async with database.transaction() as tx:
        if database.dialect == "postgresql":
            await tx.execute(
                "ALTER TABLE legato_workflows DROP CONSTRAINT IF EXISTS test_forbidden_input"
            )
            await tx.execute(
                "ALTER TABLE legato_workflows ADD CONSTRAINT test_forbidden_input "
                f"CHECK (payload <> '{payload}')"
            )
        else:
            await tx.execute(
                "CREATE TRIGGER test_forbidden_input BEFORE INSERT ON legato_workflows "
                f"WHEN NEW.payload = '{payload}' BEGIN SELECT RAISE(ABORT, 'forbidden'); END"
            )


async def _allow_payloads(app: Orchestrator) -> None:
    if app.store.database.dialect == "postgresql":
        async with app.store.database.transaction() as tx:
            await tx.execute(
                "ALTER TABLE legato_workflows DROP CONSTRAINT IF EXISTS test_forbidden_input"
            )


async def test_taken_keys_and_a_rejected_start_in_a_batch_affect_only_themselves(
    app: Orchestrator,
    engine: WorkflowEngine,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    async with app:
        existing = await engine.start("one-step", "old", idempotency_key="wf-1")
        await _forbid_payload(app, '"poison"')
        try:
            async with connection_held(app.store):
                calls = [
                    engine.start("one-step", "lead"),
                    engine.start("one-step", "a"),
                    engine.start("one-step", "again", idempotency_key="wf-1"),
                    engine.start("one-step", "poison"),
                    engine.start("one-step", "twin-1", idempotency_key="twin"),
                    engine.start("one-step", "twin-2", idempotency_key="twin"),
                    engine.start("one-step", "b"),
                ]
                starts = [asyncio.create_task(call) for call in calls]
                await until(lambda: engine.store.start_group.stats.calls == 8)
            results = await asyncio.gather(*starts, return_exceptions=True)
        finally:
            await _allow_payloads(app)
        lead, a, again, poison, twin_1, twin_2, b = results
        assert isinstance(poison, psycopg.errors.CheckViolation | sqlite3.IntegrityError)
        assert again == existing
        assert twin_1 == twin_2
        assert engine.store.start_group.stats.rejected == 1
        listed = await engine.list_workflows(limit=100)
        assert sorted(r.payload for r in listed) == sorted(
            ['"old"', '"lead"', '"a"', '"twin-1"', '"b"']
        )
        by_id = {r.workflow_id: r.payload for r in listed}
        assert [by_id[w] for w in (lead, a, twin_1, b)] == ['"lead"', '"a"', '"twin-1"', '"b"']
        # Exactly one run task per workflow written, none for the rejected or taken ones.
        assert sum((await app.store.count_by_state()).values()) == 5


async def test_closing_the_app_writes_queued_starts_and_submits_first(
    app: Orchestrator,
    store_url: str,
    connection_held: ConnectionHeld,
    until: Until,
) -> None:
    @app.task(name="noop")
    async def noop() -> None:
        return None

    @app.workflow(name="empty")
    async def empty(ctx: WorkflowContext, value: str) -> str:
        return value

    await app.open()
    async with connection_held(app.store):
        starts = [asyncio.create_task(app.start_workflow("empty", f"v{n}")) for n in range(3)]
        submits = [asyncio.create_task(app.submit("noop")) for _ in range(3)]
        await until(
            lambda: (
                app.workflows.store.start_group.stats.calls == 3
                and app.store.submit_group.stats.calls == 3
            )
        )
        closing = asyncio.create_task(app.close())
        await asyncio.sleep(0)
        with pytest.raises(StoreUnavailableError):
            await app.start_workflow("empty", "late")
    await closing
    assert all(not task.exception() for task in [*starts, *submits])
    async with Orchestrator(store_url, upgrade=False) as reopened:
        assert sum((await reopened.store.count_by_state()).values()) == 6
        assert len(await reopened.list_workflows()) == 3
