"""The workflow store's batch operations, identical on SQLite and PostgreSQL.

A worker runs workflows in batches: `begin_many` loads (and wakes) the workflows of the run
tasks it claimed, `transition_many` ends them. PostgreSQL does each in one statement, SQLite
in several; these tests hold both to the same answers and the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import psycopg

from legato.kernel.clock import Clock
from legato.store import Lease, NewTask, TaskStore
from legato.store.workflow_records import (
    JournalEntry,
    JournalWrite,
    NewWorkflow,
    StepKind,
    StepState,
    Transition,
    WorkflowState,
)
from legato.store.workflow_store import WorkflowStore

from .pg_counters import count_from, index_reads

OpenStore = Callable[[Clock], AbstractAsyncContextManager[TaskStore]]


def _run_task() -> NewTask:
    return NewTask(name="wf.run", queue="default", payload="{}", priority=0, run_at=0.0, retry="{}")


async def _start(store: WorkflowStore, count: int) -> list[tuple[int, int]]:
    """Start `count` workflows; return (workflow id, run task id) of each."""
    started = []
    for n in range(count):
        workflow_id, _ = await store.start(
            NewWorkflow(name="flow", payload=f'{{"n":{n}}}'), _run_task(), 1.0
        )
        record = await store.get(workflow_id)
        assert record is not None
        assert record.task_id is not None
        started.append((workflow_id, record.task_id))
    return started


async def _three_running(
    tasks: TaskStore,
) -> tuple[WorkflowStore, list[tuple[int, int]], dict[int, Lease]]:
    """Three started workflows whose run tasks are claimed and whose runs have begun."""
    store = WorkflowStore(tasks.database)
    started = await _start(store, 3)
    leases = {lease.task_id: lease for lease in await tasks.claim("w", ["default"], 5, 2.0, 30)}
    await store.begin_many([task_id for _, task_id in started], 2.0)
    return store, started, leases


async def test_begin_many_wakes_pending_workflows_and_replays_running_ones_with_journal(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as tasks:
        store = WorkflowStore(tasks.database)
        (w1, t1), (w2, t2) = await _start(store, 2)
        leases = {lease.task_id: lease for lease in await tasks.claim("w", ["default"], 5, 2.0, 30)}
        first = await store.begin_many([t1, t2, 10**9], 2.0)
        assert set(first) == {t1, t2}  # a task no workflow points at is absent
        assert [(r.state, r.updated_at, r.journal) for r in first.values()] == [
            (WorkflowState.RUNNING, 2.0, ()),
            (WorkflowState.RUNNING, 2.0, ()),
        ]
        entry = JournalEntry(
            0, "charge", StepKind.STEP, StepState.SUCCEEDED, "7", None, "f", None, None, None,
            1, 2.5, 2.6,
        )  # fmt: skip
        assert await store.append_many([JournalWrite(w2, t2, leases[t2].fencing_token, entry)])
        # The same tasks again (a replay after a lost lease): running ones are not woken
        # twice, and come back with their journals.
        again = await store.begin_many([t2, t1], 3.0)
        assert again[t2].state is WorkflowState.RUNNING
        assert again[t2].updated_at == 2.0
        assert again[t2].journal == (entry,)
        assert again[t1].journal == ()
        record = await store.get(w1)
    assert record is not None
    assert [(e.from_state, e.to_state, e.reason, e.task_id) for e in record.history] == [
        (None, WorkflowState.PENDING, "started", t1),
        (WorkflowState.PENDING, WorkflowState.RUNNING, "running", t1),
    ]


async def test_transition_many_applies_the_first_current_change_per_workflow_only(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as tasks:
        store, ((w1, t1), (w2, t2), (w3, t3)), _ = await _three_running(tasks)
        applied = await store.transition_many(
            [
                Transition(w1, t1, WorkflowState.SUCCEEDED, "succeeded", result='"done"'),
                # A second change for the same workflow in one batch: not applied.
                Transition(w1, t1, WorkflowState.DEAD, "bug", error="late"),
                # A change from a task the workflow does not point at: not applied.
                Transition(w2, t1, WorkflowState.SUCCEEDED, "succeeded"),
                Transition(w3, t3, WorkflowState.COMPENSATING, "step failed", error="boom"),
            ],
            3.0,
        )
        assert applied == [True, False, False, True]
        # An ended workflow takes no further change.
        later = [
            Transition(w1, t1, WorkflowState.DEAD, "bug"),
            Transition(w2, t2, WorkflowState.CANCELLED, "cancelled"),
        ]
        assert await store.transition_many(later, 4.0) == [False, True]
        records = [await store.get(w) for w in (w1, w2, w3)]
    one, two, three = (r for r in records if r is not None)
    assert (one.state, one.result, one.error, one.updated_at) == (
        WorkflowState.SUCCEEDED,
        '"done"',
        None,
        3.0,
    )
    assert (two.state, two.updated_at) == (WorkflowState.CANCELLED, 4.0)
    assert (three.state, three.error) == (WorkflowState.COMPENSATING, "boom")
    assert [(e.from_state, e.to_state, e.reason, e.task_id, e.at) for e in one.history[2:]] == [
        (WorkflowState.RUNNING, WorkflowState.SUCCEEDED, "succeeded", t1, 3.0)
    ]
    assert [(e.reason, e.detail) for e in three.history[2:]] == [("step failed", "boom")]
    assert [e.reason for e in two.history] == ["started", "running", "cancelled"]


async def test_end_many_journals_each_last_entry_with_its_end_and_refuses_a_stale_run(
    open_store: OpenStore, clock: Clock
) -> None:
    async with open_store(clock) as tasks:
        store, ((w1, t1), (w2, t2), (w3, t3)), leases = await _three_running(tasks)

        def last(workflow_id: int, task_id: int, token: int) -> JournalWrite:
            entry = JournalEntry(
                0, "charge", StepKind.STEP, StepState.SUCCEEDED, "1", None, "f", None, None,
                None, 1, 2.5, 2.6,
            )  # fmt: skip
            return JournalWrite(workflow_id, task_id, token, entry)

        ends = await store.end_many(
            [
                (Transition(w1, t1, WorkflowState.SUCCEEDED, "succeeded", result="1"),
                 last(w1, t1, leases[t1].fencing_token)),
                # A run whose lease was taken over (its token is old): neither is written.
                (Transition(w2, t2, WorkflowState.SUCCEEDED, "succeeded", result="1"),
                 last(w2, t2, leases[t2].fencing_token - 1)),
                # An end with no entry to journal.
                (Transition(w3, t3, WorkflowState.SUCCEEDED, "succeeded", result="2"), None),
            ],
            3.0,
        )  # fmt: skip
        assert ends == [(True, True), (False, False), (True, True)]
        records = [await store.get(w) for w in (w1, w2, w3)]
    one, two, three = (r for r in records if r is not None)
    assert (one.state, [e.result for e in one.journal]) == (WorkflowState.SUCCEEDED, ["1"])
    assert (two.state, two.journal) == (WorkflowState.RUNNING, ())
    assert (three.state, three.result, three.journal) == (WorkflowState.SUCCEEDED, "2", ())


async def test_on_postgresql_ending_a_batch_reads_its_journal_and_tasks_by_key(
    postgres_database: str, clock: Clock
) -> None:
    # An end checks that its run still holds the task's lease (journal fence) and that the
    # step it requires is journaled. Planned while the tables were young, the first read
    # every running task through the lease index, the second hashed the whole journal
    # table: work in the size of the tables on every batch. 300 workflows run, each with a
    # journaled step; ending 20 of them must read about 20 journal keys and no task index.
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute(
            "TRUNCATE legato_tasks, legato_task_events, legato_workflows, "
            "legato_workflow_steps, legato_workflow_events RESTART IDENTITY CASCADE"
        )
    tasks = await TaskStore.open(postgres_database, upgrade=False, clock=clock)
    store = WorkflowStore(tasks.database)
    indexes = ("ix_legato_tasks_lease", "ix_legato_tasks_state_queue", "legato_workflow_steps_pkey")

    def entry(workflow_id: int, task_id: int, index: int) -> JournalWrite:
        step = JournalEntry(
            index, f"s{index}", StepKind.STEP, StepState.SUCCEEDED, "1", None, "f", None, None,
            None, 1, 2.5, 2.6,
        )  # fmt: skip
        return JournalWrite(workflow_id, task_id, leases[task_id].fencing_token, step)

    try:
        started = [
            await store.start(NewWorkflow(name="flow", payload="{}"), _run_task(), 1.0)
            for _ in range(300)
        ]
        leases = {
            lease.task_id: lease for lease in await tasks.claim("w", ["default"], 300, 2.0, 30)
        }
        records = await store.begin_many(sorted(leases), 2.0)
        runs = sorted((r.workflow_id, r.task_id) for r in records.values() if r.task_id)
        assert await store.append_many([entry(w, t, 0) for w, t in runs]) == [True] * 300
        backend = await count_from(tasks.database, postgres_database, indexes)
        ends = await store.end_many(
            [
                (Transition(w, t, WorkflowState.SUCCEEDED, "succeeded", result="1"), entry(w, t, 1))
                for w, t in runs[:20]
            ],
            3.0,
        )
        reads = index_reads(postgres_database, backend, indexes)
    finally:
        await tasks.close()
    assert len(started) == len(runs) == 300
    assert ends == [(True, True)] * 20
    assert reads["ix_legato_tasks_lease"] == reads["ix_legato_tasks_state_queue"] == 0
    # The 20 required entries, and the 20 new keys checked for conflicts: not the 320 rows.
    assert reads["legato_workflow_steps_pkey"] <= 40
