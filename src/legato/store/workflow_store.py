"""The workflow store: workflows, their journals and histories, in SQL on either backend.

Each public method is one transaction. A workflow row points at the task that runs it
(`task_id`); journal writes are fenced on that pointer and on the task's lease, so a run
that lost its lease (or was superseded by a later run) cannot write to the journal. A
journal position is written once (the primary key is (workflow_id, step_index)): when two
runs race, the first write wins and the other learns it lost.

Times are POSIX seconds from the caller's `Clock`; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from legato.kernel.errors import ValidationError
from legato.store.commit_groups import BatchRejected, CommitGroup
from legato.store.database import ByKey, Database, Row, Transaction
from legato.store.errors import StoreUnavailableError
from legato.store.records import NewTask
from legato.store.sql_batches import chunks, in_list, placeholders, row_set
from legato.store.task_store import (
    NOTIFY_CHANNEL,
    TASK_INSERT_COLUMNS,
    TASK_INSERT_TYPES,
    TaskStore,
    running,
    task_row,
)
from legato.store.workflow_records import (
    JournalEntry,
    JournalWrite,
    NewWorkflow,
    StepKind,
    StepState,
    Transition,
    WorkflowEvent,
    WorkflowRecord,
    WorkflowState,
)

__all__ = ["START_GROUP_LIMIT", "WorkflowStore"]

T = TypeVar("T")

START_GROUP_LIMIT = 128
"""Most workflow starts of one process that share a transaction (group commit)."""

_StartCall = tuple[NewWorkflow, NewTask, float]

_WORKFLOW_COLUMNS = (
    "id, name, state, payload, task_id, idempotency_key, result, error, created_at, "
    "updated_at, wake_at"
)
_STEP_COLUMNS = (
    "step_index, step_name, kind, state, result, error, function, compensation, "
    "compensation_state, compensation_error, attempts, started_at, finished_at, compensated_at"
)
_ACTIVE = "('pending', 'running', 'sleeping', 'compensating')"
# The run writing must be the one the workflow points at, and still hold its task's lease.
_FENCE = (
    "EXISTS (SELECT 1 FROM legato_workflows w JOIN legato_tasks t ON t.id = w.task_id "
    f"WHERE w.id = ? AND t.id = ? AND t.fencing_token = ? AND {running('t')})"
)


_ENTRY_TYPES = (
    "bigint",
    "integer",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "integer",
    "double precision",
    "double precision",
    "bigint",
    "bigint",
)
# The fence of `_FENCE`, for rows of a VALUES list (v.column1: workflow, 13: task, 14: token).
_FENCE_V = (
    "EXISTS (SELECT 1 FROM legato_workflows w JOIN legato_tasks t ON t.id = w.task_id "
    "WHERE w.id = v.column1 AND t.id = v.column13 AND t.fencing_token = v.column14 "
    f"AND {running('t')})"
)


def _workflow(
    row: Row,
    journal: tuple[JournalEntry, ...] = (),
    history: tuple[WorkflowEvent, ...] = (),
    *,
    running_since: float | None = None,
) -> WorkflowRecord:
    """The record of a `_WORKFLOW_COLUMNS` row; `running_since`: woken then, now running."""
    woken = running_since is not None
    return WorkflowRecord(
        workflow_id=row[0],
        name=row[1],
        state=WorkflowState.RUNNING if woken else WorkflowState(row[2]),
        payload=row[3],
        task_id=row[4],
        idempotency_key=row[5],
        result=row[6],
        error=row[7],
        created_at=row[8],
        updated_at=row[9] if running_since is None else running_since,
        wake_at=None if woken else row[10],
        journal=journal,
        history=history,
    )


def _begun(rows: Sequence[Row], steps: Sequence[Row], now: float) -> dict[int, WorkflowRecord]:
    """`begin_many`'s answer from the workflow rows as they were and their journals' rows.

    A pending or sleeping workflow was woken at `now` and is now running.
    """
    journals: dict[int, list[JournalEntry]] = {}
    for step in steps:
        journals.setdefault(step[0], []).append(_entry(step[1:]))
    woken = (WorkflowState.PENDING.value, WorkflowState.SLEEPING.value)
    return {
        row[4]: _workflow(
            row, tuple(journals.get(row[0], ())), running_since=now if row[2] in woken else None
        )
        for row in rows
        if row[4] is not None
    }


def _entry(row: Row) -> JournalEntry:
    return JournalEntry(
        index=row[0],
        name=row[1],
        kind=StepKind(row[2]),
        state=StepState(row[3]),
        result=row[4],
        error=row[5],
        function=row[6],
        compensation=row[7],
        compensation_state=row[8],
        compensation_error=row[9],
        attempts=row[10],
        started_at=row[11],
        finished_at=row[12],
        compensated_at=row[13],
    )


class WorkflowStore:
    """Workflows, journals and workflow history on one `Database` (SQLite or PostgreSQL)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._postgres = database.dialect == "postgresql"
        self._for_update = " FOR UPDATE" if self._postgres else ""
        # Task rows are only ever written by the task store, here inside our transactions.
        self._tasks = TaskStore(database)
        self.start_group: CommitGroup[_StartCall, tuple[int, bool]] = CommitGroup(
            self._start_alone, self._start_together, limit=START_GROUP_LIMIT, name="workflow start"
        )
        """Group commit of concurrent starts; its `stats` count the transactions."""

    # ----------------------------------------------------------------- helpers

    def _in(
        self, column: str, values: Sequence[Any], sql_type: str | None = None
    ) -> tuple[str, list[Any]]:
        return in_list(column, values, postgres=self._postgres, sql_type=sql_type)

    def _values(
        self, types: Sequence[str], rows: Sequence[Sequence[Any]], *, binary: bool = False
    ) -> tuple[str, list[Any]]:
        return row_set(types, rows, postgres=self._postgres, binary=binary)

    async def _events(
        self,
        tx: Transaction,
        events: Sequence[
            tuple[int, float, WorkflowState | None, WorkflowState, str, int | None, str | None]
        ],
    ) -> None:
        await tx.fetch_many(self._event_statements(events))

    def _event_statements(
        self,
        events: Sequence[
            tuple[int, float, WorkflowState | None, WorkflowState, str, int | None, str | None]
        ],
    ) -> list[tuple[str, Sequence[Any]]]:
        """The INSERTs of these history events, to send with other statements."""
        statements: list[tuple[str, Sequence[Any]]] = []
        for chunk in chunks(events, 500):
            values, params = self._values(
                ("bigint", "double precision", "text", "text", "text", "bigint", "text"),
                [
                    (
                        workflow_id,
                        float(at),
                        from_state.value if from_state else None,
                        to_state.value,
                        reason[:32],
                        task_id,
                        detail,
                    )
                    for workflow_id, at, from_state, to_state, reason, task_id, detail in chunk
                ],
                binary=True,
            )
            statements.append(
                (
                    "INSERT INTO legato_workflow_events (workflow_id, at, from_state, to_state, "
                    f"reason, task_id, detail) SELECT * FROM {values}",
                    params,
                )
            )
        return statements

    async def _event(
        self,
        tx: Transaction,
        workflow_id: int,
        now: float,
        from_state: WorkflowState | None,
        to_state: WorkflowState,
        reason: str,
        task_id: int | None,
        detail: str | None = None,
    ) -> None:
        await tx.execute(
            "INSERT INTO legato_workflow_events (workflow_id, at, from_state, to_state, reason, "
            "task_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                workflow_id,
                now,
                from_state.value if from_state else None,
                to_state.value,
                reason[:32],
                task_id,
                detail,
            ),
        )

    async def _insert_task(self, tx: Transaction, task: NewTask, now: float) -> int:
        # Run tasks carry no idempotency key (the workflow's pointer is what makes a run
        # the current one), so the insert always creates a row.
        return (await self._tasks.submit_in(tx, [task], now))[0].task_id

    async def _find_keys(self, keys: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in chunks(keys, 500):
            where, params = self._in("idempotency_key", chunk)
            rows = await self.database.run(
                f"SELECT idempotency_key, id FROM legato_workflows WHERE {where}", params
            )
            found.update({key: workflow_id for key, workflow_id in rows})
        return found

    # ----------------------------------------------------------------- start

    async def start(self, workflow: NewWorkflow, task: NewTask, now: float) -> tuple[int, bool]:
        """Insert `workflow` and the task that will run it, atomically.

        Returns (workflow id, created). A workflow whose idempotency key already exists is
        not started again: its id comes back with `created=False`, whatever its state.

        Group commit: starts of this process that arrive while another one is in flight
        share the next transaction (up to START_GROUP_LIMIT; see `start_group`). Each call
        still gets its own workflow id or its own error.
        """
        return await self.start_group.submit((workflow, task, now))

    async def drain(self) -> None:
        """Finish the starts already handed over and refuse new ones (before closing)."""
        await self.start_group.drain()

    async def _start_alone(self, call: _StartCall) -> tuple[int, bool]:
        if not self._postgres:
            return (await self._start_sqlite([call]))[0]
        workflow, task, now = call
        started = await self._start_postgres(workflow, task, now)
        if started is not None:
            return started, True
        key = workflow.idempotency_key
        assert key is not None  # only a taken key inserts nothing
        return (await self._find_keys([key]))[key], False

    async def _start_together(self, calls: Sequence[_StartCall]) -> list[tuple[int, bool]]:
        try:
            if not self._postgres:
                return await self._start_sqlite(calls)
            created = await self._start_postgres_many(calls)
        except StoreUnavailableError:
            raise  # the connection broke: nobody knows whether it committed
        except Exception as error:
            raise BatchRejected() from error  # rolled back: nothing was written
        taken = [w.idempotency_key for i, (w, _, _) in enumerate(calls) if i not in created]
        if any(key is None for key in taken):
            raise RuntimeError("a keyless workflow start inserted nothing: the statement is wrong")
        existing = await self._find_keys(sorted({key for key in taken if key is not None}))
        results: list[tuple[int, bool]] = []
        for index, (workflow, _, _) in enumerate(calls):
            if index in created:
                results.append((created[index], True))
            else:
                assert workflow.idempotency_key is not None
                results.append((existing[workflow.idempotency_key], False))
        return results

    async def _start_sqlite(self, calls: Sequence[_StartCall]) -> list[tuple[int, bool]]:
        # One transaction; the key check runs under its write lock, so no other process
        # can take the key between the check and the insert.
        results: list[tuple[int, bool]] = []
        async with self.database.transaction() as tx:
            for workflow, task, now in calls:
                key = workflow.idempotency_key
                if key is not None:
                    rows = await tx.fetch(
                        "SELECT id FROM legato_workflows WHERE idempotency_key = ?", (key,)
                    )
                    if rows:
                        results.append((rows[0][0], False))
                        continue
                task_id = await self._insert_task(tx, task, now)
                rows = await tx.fetch(
                    "INSERT INTO legato_workflows (name, state, payload, task_id, "
                    "idempotency_key, created_at, updated_at) "
                    "VALUES (?, 'pending', ?, ?, ?, ?, ?) RETURNING id",
                    (workflow.name, workflow.payload, task_id, key, now, now),
                )
                workflow_id: int = rows[0][0]
                await self._event(
                    tx, workflow_id, now, None, WorkflowState.PENDING, "started", task_id
                )
                results.append((workflow_id, True))
        return results

    async def _start_postgres(self, workflow: NewWorkflow, task: NewTask, now: float) -> int | None:
        # One statement, so one round trip and one commit: the hot path of every start.
        # The task id is drawn first so the workflow row can point at it; foreign keys are
        # checked at the end of the statement, when the task row exists. A taken key makes
        # the workflow insert do nothing, and with it every later part.
        notify = ", (SELECT pg_notify(?, ?) FROM w) AS notified" if task.run_at <= now else ""
        notify_params = [NOTIFY_CHANNEL, task.queue] if task.run_at <= now else []
        row = task_row(task, now)
        rows = await self.database.run(
            "WITH t_id AS (SELECT nextval(pg_get_serial_sequence('legato_tasks', 'id')) AS id), "
            "w AS (INSERT INTO legato_workflows (name, state, payload, task_id, idempotency_key, "
            "created_at, updated_at) SELECT ?, 'pending', ?, t_id.id, ?, ?, ? FROM t_id "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, task_id), "
            f"t AS (INSERT INTO legato_tasks (id, {TASK_INSERT_COLUMNS}) "
            f"SELECT w.task_id, {placeholders(len(row))} FROM w RETURNING id), "
            "e AS (INSERT INTO legato_workflow_events (workflow_id, at, from_state, to_state, "
            "reason, task_id) SELECT w.id, ?, NULL, 'pending', 'started', w.task_id FROM w) "
            f"SELECT w.id, (SELECT count(*) FROM t){notify} FROM w",
            [
                workflow.name,
                workflow.payload,
                workflow.idempotency_key,
                now,
                now,
                *row,
                now,
                *notify_params,
            ],
        )
        return rows[0][0] if rows else None

    async def _start_postgres_many(self, calls: Sequence[_StartCall]) -> dict[int, int]:
        # `_start_postgres` for a batch, still one statement: the inputs travel as one array
        # per column, each row draws its task id in input order (so the run tasks queue in
        # start order), and a taken key (in the table, or earlier in this batch) inserts
        # nothing for that row. Returns {input index: workflow id} for the rows inserted.
        task_columns = [f"c{index}" for index in range(len(TASK_INSERT_TYPES))]
        types = ("text", "text", "text", "double precision", *TASK_INSERT_TYPES)
        columns = ["w_name", "w_payload", "w_key", "at", *task_columns]
        arrays: list[list[Any]] = [[] for _ in columns]
        for workflow, task, now in calls:
            values = (workflow.name, workflow.payload, workflow.idempotency_key, float(now))
            for array, value in zip(arrays, (*values, *task_row(task, now)), strict=True):
                array.append(value)
        due = sorted({task.queue for _, task, now in calls if task.run_at <= now})
        notify = ", (SELECT pg_notify(?, ?)) AS notified" if due else ""
        notify_params = [NOTIFY_CHANNEL, ",".join(due)] if due else []
        # Binary arrays (`%b`, see `row_set`): each column holds values of one Python type.
        unnest = ", ".join(f"CAST(%b AS {sql_type}[])" for sql_type in types)
        rows = await self.database.run(
            "WITH v AS (SELECT nextval(pg_get_serial_sequence('legato_tasks', 'id')) AS task_id, "
            f"u.* FROM unnest({unnest}) WITH ORDINALITY AS u({', '.join(columns)}, ord)), "
            "w AS (INSERT INTO legato_workflows (name, state, payload, task_id, idempotency_key, "
            "created_at, updated_at) SELECT w_name, 'pending', w_payload, task_id, w_key, at, at "
            "FROM v ORDER BY ord ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, task_id), "
            f"t AS (INSERT INTO legato_tasks (id, {TASK_INSERT_COLUMNS}) "
            f"SELECT v.task_id, {', '.join(f'v.{c}' for c in task_columns)} FROM v "
            "JOIN w ON w.task_id = v.task_id ORDER BY v.ord RETURNING id), "
            "e AS (INSERT INTO legato_workflow_events (workflow_id, at, from_state, to_state, "
            "reason, task_id) SELECT w.id, v.at, NULL, 'pending', 'started', w.task_id "
            "FROM w JOIN v ON v.task_id = w.task_id) "
            f"SELECT v.ord, w.id, (SELECT count(*) FROM t){notify} "
            "FROM w JOIN v ON v.task_id = w.task_id",
            [*arrays, *notify_params],
        )
        return {int(row[0]) - 1: int(row[1]) for row in rows}

    # ----------------------------------------------------------------- run

    async def begin(self, task_id: int, now: float) -> WorkflowRecord | None:
        """Load the workflow task `task_id` runs, with its journal; mark it running.

        Returns None when no workflow points at this task (it was superseded by a later
        run, or the workflow was deleted). See `begin_many`.
        """
        return (await self.begin_many([task_id], now)).get(task_id)

    async def begin_many(
        self, task_ids: Sequence[int], now: float, *, durable: bool = True
    ) -> dict[int, WorkflowRecord]:
        """Load the workflows these run tasks point at, with their journals, in one transaction.

        Returns {task_id: workflow}; a task no workflow points at is absent. Workflows in a
        terminal state come back as they are; pending or sleeping ones become running,
        each with an event.
        """
        if not task_ids:
            return {}
        if self._postgres:
            return await self._begin_many_postgres(task_ids, now, durable=durable)
        async with self.database.transaction(durable=durable) as tx:
            where, in_params = self._in("task_id", task_ids, "bigint")
            rows = await tx.fetch(
                ByKey(
                    f"SELECT {_WORKFLOW_COLUMNS} FROM legato_workflows WHERE {where} ORDER BY id"
                    + self._for_update
                ),
                in_params,
            )
            if not rows:
                return {}
            # Built once, below, as they leave this transaction (with their journals).
            found = [(row, WorkflowState(row[2])) for row in rows]
            # A pending workflow has never run, so it has no journal to read: only the others'
            # steps are (a batch of first runs reads none, however large the steps table).
            replaying = [row[0] for row, state in found if state is not WorkflowState.PENDING]
            waking = [
                (row, state)
                for row, state in found
                if state in (WorkflowState.PENDING, WorkflowState.SLEEPING)
            ]
            # The wake-up, its events, the journals' read and the COMMIT: one round trip on
            # PostgreSQL (the read does not depend on the update).
            statements: list[tuple[str, Sequence[Any]]] = []
            if waking:
                where, in_params = self._in("id", [row[0] for row, _ in waking], "bigint")
                statements.append(
                    (
                        ByKey(
                            "UPDATE legato_workflows SET state = 'running', wake_at = NULL, "
                            f"updated_at = ? WHERE {where}"
                        ),
                        [now, *in_params],
                    )
                )
                statements += self._event_statements(
                    [
                        (
                            row[0],
                            now,
                            state,
                            WorkflowState.RUNNING,
                            "resumed" if state is WorkflowState.SLEEPING else "running",
                            row[4],
                            None,
                        )
                        for row, state in waking
                    ]
                )
            if replaying:
                statements.append(self._journals_statement(replaying))
            results = await tx.fetch_many(statements, commit=True)
            steps = results[-1] if replaying else []
        return _begun(rows, steps, now)

    async def _begin_many_postgres(
        self, task_ids: Sequence[int], now: float, *, durable: bool
    ) -> dict[int, WorkflowRecord]:
        # `begin_many` in one statement, so BEGIN, it and the COMMIT are one round trip: the
        # rows are locked in id order, the pending and sleeping ones marked running with an
        # event each, and the rows come back as they were before (the statement's snapshot).
        # The journals of the workflows that ran before are read after the commit, in a
        # second round trip only when there are any: the rows now name these runs' tasks,
        # whose leases fence off any other writer of their steps.
        statement = self.wake_statement(task_ids, now)
        async with self.database.transaction(durable=durable) as tx:
            rows = (await tx.fetch_many([statement], commit=True))[0]
        replaying = [row[0] for row in rows if row[2] != WorkflowState.PENDING.value]
        steps: list[Row] = []
        if replaying:
            steps = await self.database.run(*self._journals_statement(replaying))
        return _begun(rows, steps, now)

    def _journals_statement(self, workflow_ids: Sequence[int]) -> tuple[ByKey, list[Any]]:
        """The journal rows of these workflows, each prefixed with its workflow id, in order."""
        where, in_params = self._in("workflow_id", workflow_ids, "bigint")
        return (
            ByKey(
                f"SELECT workflow_id, {_STEP_COLUMNS} FROM legato_workflow_steps "
                f"WHERE {where} ORDER BY workflow_id, step_index"
            ),
            in_params,
        )

    def wake_statement(self, task_ids: Sequence[int], now: float) -> tuple[str, Sequence[Any]]:
        """PostgreSQL: `begin_many`'s one statement, without the journals.

        It locks the workflows these tasks run in id order, marks the pending and sleeping
        ones running with an event each, and returns their rows as they were before (see
        `first_runs`). Sent with a claim (a `ClaimRider`), it wakes the workflows of the run
        tasks claimed, in the claim's own transaction.
        """
        where, in_params = self._in("task_id", task_ids, "bigint")
        waking = "state IN ('pending', 'sleeping')"
        statement = ByKey(
            f"WITH sel AS (SELECT {_WORKFLOW_COLUMNS} FROM legato_workflows WHERE {where} "
            "ORDER BY id FOR UPDATE), "
            "upd AS (UPDATE legato_workflows w SET state = 'running', wake_at = NULL, "
            f"updated_at = ? FROM sel WHERE w.id = sel.id AND sel.{waking}), "
            "ev AS (INSERT INTO legato_workflow_events (workflow_id, at, from_state, to_state, "
            "reason, task_id, detail) SELECT id, ?, state, 'running', CASE state "
            "WHEN 'sleeping' THEN 'resumed' ELSE 'running' END, task_id, NULL FROM sel "
            f"WHERE {waking} ORDER BY id) "
            f"SELECT {_WORKFLOW_COLUMNS} FROM sel ORDER BY id"
        )
        return statement, [*in_params, now, now]

    @staticmethod
    def first_runs(rows: Sequence[Row], now: float) -> dict[int, WorkflowRecord]:
        """From `wake_statement`'s rows, {task_id: record} of the workflows that were pending.

        They are running since `now` and have no journal yet; the others (woken from a
        sleep, or running already) need theirs read, which `begin_many` does.
        """
        pending = [row for row in rows if row[2] == WorkflowState.PENDING.value]
        return _begun(pending, (), now)

    def _append_statements(self, writes: Sequence[JournalWrite]) -> list[tuple[str, Sequence[Any]]]:
        """The INSERTs journaling `writes`; each returns (workflow_id, step_index) written."""
        statements: list[tuple[str, Sequence[Any]]] = []
        for chunk in chunks(writes, 200):
            values, params = self._values(
                _ENTRY_TYPES,
                [
                    (
                        w.workflow_id,
                        w.entry.index,
                        w.entry.name,
                        w.entry.kind.value,
                        w.entry.state.value,
                        w.entry.result,
                        w.entry.error,
                        w.entry.function,
                        w.entry.compensation,
                        w.entry.attempts,
                        float(w.entry.started_at),
                        None if w.entry.finished_at is None else float(w.entry.finished_at),
                        w.task_id,
                        w.fencing_token,
                    )
                    for w in chunk
                ],
                binary=True,
            )
            statements.append(
                (
                    ByKey(
                        "INSERT INTO legato_workflow_steps (workflow_id, step_index, step_name, "
                        "kind, state, result, error, function, compensation, attempts, "
                        "started_at, finished_at) SELECT v.column1, v.column2, v.column3, "
                        "v.column4, v.column5, v.column6, v.column7, v.column8, v.column9, "
                        f"v.column10, v.column11, v.column12 FROM {values} WHERE {_FENCE_V} "
                        "ON CONFLICT (workflow_id, step_index) DO NOTHING "
                        "RETURNING workflow_id, step_index"
                    ),
                    params,
                )
            )
        return statements

    async def _append_many(
        self, tx: Transaction, writes: Sequence[JournalWrite], *, commit: bool = False
    ) -> list[bool]:
        """Journal `writes` in `tx`; with `commit`, the last INSERT carries the COMMIT."""
        written: set[tuple[int, int]] = set()
        statements = self._append_statements(writes)
        for number, statement in enumerate(statements, start=1):
            last = commit and number == len(statements)
            rows = (await tx.fetch_many([statement], commit=last))[0]
            written.update((row[0], row[1]) for row in rows)
        return [(w.workflow_id, w.entry.index) in written for w in writes]

    async def append(
        self, workflow_id: int, task_id: int, fencing_token: int, entry: JournalEntry
    ) -> bool:
        """Journal one entry; False (nothing written) if this run may no longer write.

        That happens when the position is already journaled (another run got there first),
        the workflow now points at another task, or the task's lease was lost.
        """
        return (await self.append_many([JournalWrite(workflow_id, task_id, fencing_token, entry)]))[
            0
        ]

    async def append_many(self, writes: Sequence[JournalWrite]) -> list[bool]:
        """Journal many entries in one (durable) transaction; per entry, whether it was written."""
        if not writes:
            return []
        async with self.database.transaction() as tx:
            # BEGIN, the INSERT and the COMMIT in one round trip on PostgreSQL.
            return await self._append_many(tx, writes, commit=True)

    async def sleep(
        self,
        workflow_id: int,
        task_id: int,
        fencing_token: int,
        entry: JournalEntry,
        continuation: NewTask,
        now: float,
    ) -> int | None:
        """Journal a durable sleep and hand the workflow to a task due at the wake-up time.

        In one transaction: the sleep entry, a new task (run_at = wake-up), and the
        workflow pointing at it, state sleeping. Returns the new task id, or None (nothing
        written) if this run may no longer write.
        """
        async with self.database.transaction() as tx:
            write = JournalWrite(workflow_id, task_id, fencing_token, entry)
            if not (await self._append_many(tx, [write]))[0]:
                return None
            next_task = await self._insert_task(tx, continuation, now)
            await tx.execute(
                "UPDATE legato_workflows SET state = 'sleeping', task_id = ?, wake_at = ?, "
                "updated_at = ? WHERE id = ?",
                (next_task, continuation.run_at, now, workflow_id),
            )
            await self._event(
                tx,
                workflow_id,
                now,
                WorkflowState.RUNNING,
                WorkflowState.SLEEPING,
                "sleep",
                next_task,
                f"until {continuation.run_at}",
            )
            return next_task

    async def transition(
        self,
        workflow_id: int,
        task_id: int,
        to_state: WorkflowState,
        reason: str,
        now: float,
        *,
        result: str | None = None,
        error: str | None = None,
        durable: bool = True,
    ) -> bool:
        """Move an active workflow still run by `task_id` to `to_state`, with an event.

        Returns False (nothing changed) if the workflow is already terminal or another task
        runs it now.
        """
        change = Transition(workflow_id, task_id, to_state, reason, result, error)
        return (await self.transition_many([change], now, durable=durable))[0]

    async def transition_many(
        self, changes: Sequence[Transition], now: float, *, durable: bool = True
    ) -> list[bool]:
        """Apply many transitions in one transaction; per change, whether it was applied."""
        if not changes:
            return []
        async with self.database.transaction(durable=durable) as tx:
            if self._postgres:
                statement = self._transition_statement(changes, now)
                rows = (await tx.fetch_many([statement], commit=True))[0]
                applied = {row[0] for row in rows}
                return [n in applied for n in range(len(changes))]
            return await self._transition_sqlite(tx, changes, now)

    async def end_many(
        self, ends: Sequence[tuple[Transition, JournalWrite | None]], now: float
    ) -> list[tuple[bool, bool]]:
        """Journal each run's last entry and apply its transition, all in one transaction.

        A run that ends right after a step ends here: the step's entry and the workflow's
        end commit together, durably when there is any entry (without waiting for the flush
        otherwise, as a lost end only means the run replays to it). A transition whose
        entry could not be journaled (the run no longer holds its task's lease) is not
        applied. Returns, per end, (its entry is journaled, or there was none; its
        transition was applied).
        """
        if not ends:
            return []
        writes = [write for _, write in ends if write is not None]
        changes = [change for change, _ in ends]
        async with self.database.transaction(durable=bool(writes)) as tx:
            if self._postgres:
                # The INSERTs and the update travel together: the update sees the rows the
                # INSERTs wrote and requires, for each change with an entry, that row.
                required = [None if write is None else write.entry.index for _, write in ends]
                statements = [
                    *self._append_statements(writes),
                    self._transition_statement(changes, now, required),
                ]
                results = await tx.fetch_many(statements, commit=True)
                written = {(row[0], row[1]) for rows in results[:-1] for row in rows}
                applied_at = {row[0] for row in results[-1]}
                applied = [n in applied_at for n in range(len(ends))]
            else:
                written = {
                    (w.workflow_id, w.entry.index)
                    for w, ok in zip(writes, await self._append_many(tx, writes), strict=True)
                    if ok
                }
                kept = [
                    n
                    for n, (_, write) in enumerate(ends)
                    if write is None or (write.workflow_id, write.entry.index) in written
                ]
                done = await self._transition_sqlite(tx, [changes[n] for n in kept], now)
                applied_at = {n for n, ok in zip(kept, done, strict=True) if ok}
                applied = [n in applied_at for n in range(len(ends))]
        return [
            (write is None or (write.workflow_id, write.entry.index) in written, ok)
            for (_, write), ok in zip(ends, applied, strict=True)
        ]

    async def _transition_sqlite(
        self, tx: Transaction, changes: Sequence[Transition], now: float
    ) -> list[bool]:
        if not changes:
            return []
        ids = sorted({c.workflow_id for c in changes})
        where, in_params = self._in("id", ids, "bigint")
        rows = await tx.fetch(
            f"SELECT id, state, task_id FROM legato_workflows WHERE {where} "
            f"AND state IN {_ACTIVE} ORDER BY id",
            in_params,
        )
        current = {row[0]: (WorkflowState(row[1]), row[2]) for row in rows}
        applied: list[bool] = []
        chosen: list[Transition] = []
        for change in changes:
            found = current.get(change.workflow_id)
            ok = found is not None and found[1] == change.task_id
            if ok:
                # A second change for the same workflow in this batch is not applied.
                current.pop(change.workflow_id)
                chosen.append(change)
            applied.append(ok)
        if not chosen:
            return applied
        values, params = self._values(
            ("bigint", "text", "text", "text"),
            [(c.workflow_id, c.to_state.value, c.result, c.error) for c in chosen],
        )
        states = {row[0]: WorkflowState(row[1]) for row in rows}
        events = self._event_statements(
            [
                (
                    c.workflow_id,
                    now,
                    states[c.workflow_id],
                    c.to_state,
                    c.reason,
                    c.task_id,
                    c.error,
                )
                for c in chosen
            ]
        )
        update = (
            "UPDATE legato_workflows SET state = v.column2, "
            "result = COALESCE(v.column3, legato_workflows.result), "
            "error = COALESCE(v.column4, legato_workflows.error), updated_at = ? "
            f"FROM {values} WHERE legato_workflows.id = v.column1"
        )
        await tx.fetch_many([(update, [now, *params]), *events])
        return applied

    def _transition_statement(
        self,
        changes: Sequence[Transition],
        now: float,
        required: Sequence[int | None] | None = None,
    ) -> tuple[str, Sequence[Any]]:
        """PostgreSQL: `changes` in one statement, returning the input position of each applied.

        It locks the rows in id order, keeps per active workflow the first change (input
        order) whose task the workflow points at and, where `required` gives a step index,
        whose journal holds that step; then updates those rows and writes their events. The
        rows are found by id alone: with the state in the WHERE clause as well, PostgreSQL
        may read the state index instead, every active workflow of the table. The required
        step is looked up per change, by the journal's key (a scalar subquery: an EXISTS
        there may be planned as a hash of the whole journal table, read on every batch).
        """
        steps = required if required is not None else [None] * len(changes)
        values, params = self._values(
            ("bigint", "bigint", "text", "text", "text", "text", "integer", "integer"),
            [
                (
                    c.workflow_id,
                    c.task_id,
                    c.to_state.value,
                    c.result,
                    c.error,
                    c.reason[:32],
                    n,
                    step,
                )
                for n, (c, step) in enumerate(zip(changes, steps, strict=True))
            ],
            binary=True,
        )
        where, in_params = self._in("w.id", sorted({c.workflow_id for c in changes}), "bigint")
        statement = ByKey(
            f"WITH v AS (SELECT * FROM {values}), "
            "cur AS (SELECT w.id, w.state, w.task_id FROM legato_workflows w "
            f"WHERE {where} ORDER BY w.id FOR UPDATE), "
            "pick AS (SELECT DISTINCT ON (v.column1) v.*, cur.state AS from_state FROM v "
            "JOIN cur ON cur.id = v.column1 AND cur.task_id = v.column2 "
            f"WHERE cur.state IN {_ACTIVE} AND (v.column8 IS NULL OR (SELECT true FROM "
            "legato_workflow_steps s WHERE s.workflow_id = v.column1 "
            "AND s.step_index = v.column8)) ORDER BY v.column1, v.column7), "
            "upd AS (UPDATE legato_workflows w SET state = pick.column3, "
            "result = COALESCE(pick.column4, w.result), error = COALESCE(pick.column5, w.error), "
            "updated_at = ? FROM pick WHERE w.id = pick.column1), "
            "ev AS (INSERT INTO legato_workflow_events (workflow_id, at, from_state, to_state, "
            "reason, task_id, detail) SELECT column1, ?, from_state, column3, column6, column2, "
            "column5 FROM pick ORDER BY column1) "
            "SELECT column7 FROM pick"
        )
        return statement, [*params, *in_params, now, now]

    async def record_compensation(
        self,
        workflow_id: int,
        task_id: int,
        fencing_token: int,
        index: int,
        state: str,
        error: str | None,
        now: float,
    ) -> bool:
        """Journal how the compensation of step `index` ended ("compensated" or "failed")."""
        async with self.database.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE legato_workflow_steps SET compensation_state = ?, compensation_error = ?, "
                f"compensated_at = ? WHERE workflow_id = ? AND step_index = ? AND {_FENCE} "
                "RETURNING step_index",
                (state, error, now, workflow_id, index, workflow_id, task_id, fencing_token),
            )
            return bool(rows)

    async def cancel_requested(self, task_id: int) -> bool:
        """Whether an operator asked to cancel task `task_id`."""
        rows = await self.database.run(
            "SELECT cancel_requested FROM legato_tasks WHERE id = ?", (task_id,)
        )
        return bool(rows and rows[0][0])

    # ----------------------------------------------------------------- operate

    async def cancel(self, workflow_id: int, now: float) -> tuple[WorkflowState, int | None]:
        """Cancel a workflow that waits (pending or sleeping) at once, with its task.

        A running or compensating workflow is left as it is: the caller asks its task to
        stop (its run then records the cancellation). Returns the state after the call and
        the workflow's current task id. Raises ValidationError for an unknown id.
        """
        async with self.database.transaction() as tx:
            rows = await tx.fetch(
                "SELECT state, task_id FROM legato_workflows WHERE id = ?" + self._for_update,
                (workflow_id,),
            )
            if not rows:
                raise ValidationError("workflow_id", workflow_id, "the id of an existing workflow")
            state, task_id = WorkflowState(rows[0][0]), rows[0][1]
            if state not in (WorkflowState.PENDING, WorkflowState.SLEEPING):
                return state, task_id
            await tx.execute(
                "UPDATE legato_workflows SET state = 'cancelled', wake_at = NULL, updated_at = ? "
                "WHERE id = ?",
                (now, workflow_id),
            )
            await self._event(
                tx, workflow_id, now, state, WorkflowState.CANCELLED, "cancelled", task_id
            )
            if task_id is not None:
                # The waiting task would only find a cancelled workflow; cancel it too, as
                # the task store does for a waiting task (state, reason and event).
                cancelled = await tx.fetch(
                    "UPDATE legato_tasks SET state = 'cancelled', end_reason = 'cancelled', "
                    "finished_at = ?, updated_at = ? WHERE id = ? "
                    "AND state IN ('pending', 'retrying') RETURNING fencing_token",
                    (now, now, task_id),
                )
                if cancelled:
                    await tx.execute(
                        "INSERT INTO legato_task_events (task_id, at, from_state, to_state, "
                        "reason, worker_id, fencing_token, detail) "
                        "VALUES (?, ?, 'pending', 'cancelled', 'cancelled', NULL, ?, ?)",
                        (task_id, now, cancelled[0][0], f"workflow {workflow_id} cancelled"),
                    )
            return WorkflowState.CANCELLED, task_id

    # ----------------------------------------------------------------- read

    async def get(self, workflow_id: int) -> WorkflowRecord | None:
        """Return one workflow with its journal and history (oldest first), or None."""
        # The three reads travel together: one round trip on PostgreSQL.
        async with self.database.transaction(write=False) as tx:
            rows, steps, events = await tx.fetch_many(
                [
                    (
                        f"SELECT {_WORKFLOW_COLUMNS} FROM legato_workflows WHERE id = ?",
                        (workflow_id,),
                    ),
                    (
                        f"SELECT {_STEP_COLUMNS} FROM legato_workflow_steps "
                        "WHERE workflow_id = ? ORDER BY step_index",
                        (workflow_id,),
                    ),
                    (
                        "SELECT at, from_state, to_state, reason, task_id, detail "
                        "FROM legato_workflow_events WHERE workflow_id = ? ORDER BY id",
                        (workflow_id,),
                    ),
                ],
                commit=True,
            )
        if not rows:
            return None
        return _workflow(
            rows[0],
            tuple(_entry(row) for row in steps),
            tuple(
                WorkflowEvent(
                    at=row[0],
                    from_state=WorkflowState(row[1]) if row[1] else None,
                    to_state=WorkflowState(row[2]),
                    reason=row[3],
                    task_id=row[4],
                    detail=row[5],
                )
                for row in events
            ),
        )

    async def list(
        self,
        *,
        states: Sequence[WorkflowState] = (),
        name: str | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[WorkflowRecord]:
        """Return workflows (without journal or history) by id, optionally filtered."""
        clauses = ["id > ?"]
        params: list[Any] = [after_id]
        if states:
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            params += [state.value for state in states]
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        async with self.database.transaction(write=False) as tx:
            rows = await tx.fetch(
                f"SELECT {_WORKFLOW_COLUMNS} FROM legato_workflows "
                f"WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?",
                [*params, limit],
            )
        return [_workflow(row) for row in rows]

    async def count_by_state(self) -> dict[WorkflowState, int]:
        """Return how many workflows are in each state (states with none are absent)."""
        rows = await self.database.run(
            "SELECT state, count(*) FROM legato_workflows GROUP BY state"
        )
        return {WorkflowState(state): count for state, count in rows}
